import type { TenantStatus } from "../../platform/db/schema.ts";

/**
 * Roles and what each may do (promise T5): the one table of tenant permissions. Routes declare one of these
 * permissions; the access control checks it against the caller's role on every request. The README shows
 * this table; the permission matrix (test/permission-matrix.test.ts) holds an independent, hand-written
 * copy of the expectations, so a change here that is not made there on purpose fails.
 */

export const MEMBERSHIP_ROLES = ["owner", "admin", "member", "viewer", "guest"] as const;
export type MembershipRole = (typeof MEMBERSHIP_ROLES)[number];

/** The roles an API key can carry: a guest sees only what is shared with them, which a key cannot be. */
export const API_KEY_ROLES = ["owner", "admin", "member", "viewer"] as const;
export type ApiKeyRole = (typeof API_KEY_ROLES)[number];

/** Higher outranks lower; nobody grants a role above their own. */
export const ROLE_RANK: Readonly<Record<MembershipRole, number>> = {
  owner: 4,
  admin: 3,
  member: 2,
  viewer: 1,
  guest: 0,
};

export function outranks(a: MembershipRole, b: MembershipRole): boolean {
  return ROLE_RANK[a] > ROLE_RANK[b];
}

/** The lower of two roles: an API key acts with the lower of its own role and its owner's current one. */
export function lowerRole<R extends MembershipRole>(a: R, b: R): R {
  return ROLE_RANK[a] <= ROLE_RANK[b] ? a : b;
}

interface PermissionRule {
  roles: readonly MembershipRole[];
  /** Reads (and export) stay allowed while the tenant is cancelled or pending deletion; writes do not. */
  writes: boolean;
  description: string;
}

const ALL_STAFF = ["owner", "admin", "member", "viewer"] as const;
const ADMINS = ["owner", "admin"] as const;

export const PERMISSIONS = {
  "tenant.read": { roles: ALL_STAFF, writes: false, description: "see the tenant's name, status and settings" },
  "tenant.settings.update": {
    roles: ADMINS,
    writes: true,
    description: "change the tenant's settings (time zone, locale, guest sharing)",
  },
  "members.list": {
    roles: ALL_STAFF,
    writes: false,
    description: "list the tenant's members (display name, avatar and role only)",
  },
  "members.manage": {
    roles: ADMINS,
    writes: true,
    description: "change roles (never above one's own; owner only by owners), remove members, end their sessions",
  },
  "invitations.manage": {
    roles: ADMINS,
    writes: true,
    description: "invite people by email (never above one's own role), list and revoke invitations",
  },
  "api-keys.personal": {
    roles: ALL_STAFF,
    writes: true,
    description: "create, list and revoke one's own personal API keys",
  },
  "api-keys.service": {
    roles: ADMINS,
    writes: true,
    description: "create, list and revoke the tenant's service keys and see every key",
  },
  "security.read": {
    roles: ADMINS,
    writes: false,
    description: "see the security policy, SSO configurations, verified domains and security alerts",
  },
  "security.manage": {
    roles: ADMINS,
    writes: true,
    description: "change the security policy (break-glass owner: owners only), SSO configurations and domains",
  },
  "security.break-glass": {
    roles: ["owner"],
    writes: true,
    description: "the designated owner opens the security settings with a passkey while the SSO provider is down",
  },
  "audit.read": {
    roles: ADMINS,
    writes: false,
    description: "read, filter, export and verify the tenant's audit log",
  },
} as const satisfies Record<string, PermissionRule>;

export type TenantPermission = keyof typeof PERMISSIONS;

export function isTenantPermission(name: string): name is TenantPermission {
  return Object.hasOwn(PERMISSIONS, name);
}

export function roleAllows(role: MembershipRole, permission: TenantPermission): boolean {
  return (PERMISSIONS[permission].roles as readonly MembershipRole[]).includes(role);
}

/**
 * What a tenant's status lets through. Suspended: nothing (the operator reinstates). Cancelled and pending
 * deletion: read-only, export included. Deleted: the tenant is gone (404).
 */
export function statusAllows(status: TenantStatus, permission: TenantPermission): boolean {
  if (status === "active") return true;
  if (status === "cancelled" || status === "pending-deletion") return !PERMISSIONS[permission].writes;
  return false;
}

/** The permission table as Markdown, as the README shows it (roles.test.ts keeps the two the same). */
export function permissionTableMarkdown(): string {
  const head = `| permission | ${MEMBERSHIP_ROLES.join(" | ")} | cancelled tenant | what it allows |`;
  const rule = `|---|${MEMBERSHIP_ROLES.map(() => ":-:").join("|")}|:-:|---|`;
  const rows = Object.entries(PERMISSIONS).map(([name, permission]) => {
    const roles = permission.roles as readonly MembershipRole[];
    const cells = MEMBERSHIP_ROLES.map((role) => (roles.includes(role) ? "✓" : ""));
    return `| \`${name}\` | ${cells.join(" | ")} | ${permission.writes ? "" : "✓"} | ${permission.description} |`;
  });
  return [head, rule, ...rows].join("\n");
}
