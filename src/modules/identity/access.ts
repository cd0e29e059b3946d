import { type AccessControl, noAccessControl } from "../../platform/http/app.ts";
import type { IdentityDeps } from "./deps.ts";

// Placeholder: replaced by the session and API key access control.
export function createAccessControl(_deps: IdentityDeps): AccessControl {
  return noAccessControl;
}
