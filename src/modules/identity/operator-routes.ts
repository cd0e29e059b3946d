import type { AnyRoute } from "../../platform/http/routes.ts";
import type { IdentityDeps } from "./deps.ts";

// Placeholder: replaced by the routes of this area.
export function operatorRoutes(_deps: IdentityDeps): AnyRoute[] {
  return [];
}
