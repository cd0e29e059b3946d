import type { AnyRoute } from "../../platform/http/routes.ts";
import type { IdentityDeps } from "./deps.ts";

// Placeholder: replaced by the routes of this area.
export function accountRoutes(_deps: IdentityDeps): AnyRoute[] {
  return [];
}
