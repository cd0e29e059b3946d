import type { AccessControl } from "../../platform/http/app.ts";
import type { AnyRoute } from "../../platform/http/routes.ts";
import type { MailTemplate } from "../../platform/mail/index.ts";
import { createAccessControl } from "./access.ts";
import { identityTemplates } from "./account-mail.ts";
import { accountRoutes } from "./account-routes.ts";
import { alertTemplates } from "./alert-mail.ts";
import { alertRoutes } from "./alert-routes.ts";
import { apiKeyRoutes } from "./api-key-routes.ts";
import type { IdentityDeps } from "./deps.ts";
import { factorResetRoutes } from "./factor-resets.ts";
import { memberTemplates } from "./member-mail.ts";
import { memberRoutes } from "./member-routes.ts";
import { operatorRoutes } from "./operator-routes.ts";
import { passkeyRoutes } from "./passkey-routes.ts";
import { policyRoutes } from "./policy-routes.ts";
import { sessionRoutes } from "./session-routes.ts";
import { ssoAdminRoutes } from "./sso-admin-routes.ts";
import { ssoRoutes } from "./sso-routes.ts";
import { totpRoutes } from "./totp-routes.ts";

export type { IdentityDeps } from "./deps.ts";
export { identityInventory } from "./inventory.ts";

export interface Identity {
  routes: AnyRoute[];
  accessControl: AccessControl;
}

/** The identity module's mail templates, registered with the mailer before the module is built. */
export const IDENTITY_TEMPLATES: readonly MailTemplate[] = [
  ...identityTemplates,
  ...memberTemplates,
  ...alertTemplates,
];

/** The identity module: its routes and the access control every protected route goes through. */
export function createIdentity(deps: IdentityDeps): Identity {
  const access = createAccessControl(deps);
  return {
    routes: [
      ...accountRoutes(deps),
      ...sessionRoutes(deps),
      ...memberRoutes(deps),
      ...operatorRoutes(deps),
      ...apiKeyRoutes(deps),
      ...factorResetRoutes(deps),
      ...totpRoutes(deps, access),
      ...passkeyRoutes(deps, access),
      ...policyRoutes(deps),
      ...alertRoutes(deps),
      ...ssoAdminRoutes(deps),
      ...ssoRoutes(deps),
    ],
    accessControl: access,
  };
}
