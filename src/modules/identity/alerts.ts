import { SYSTEM_ACTOR } from "../../platform/audit/index.ts";
import type { Tx } from "../../platform/db/index.ts";
import { uuidv7 } from "../../platform/ids.ts";
import { ALERT_FACTORS, type AlertFactor, tenantAlertMail, userAlertMail } from "./alert-mail.ts";
import type { IdentityDeps } from "./deps.ts";
import type { AlertDetails, AlertKind, AlertSeverity } from "./devices-alerts-schema.ts";
import { pageLink } from "./links.ts";
import { MEMBERSHIP_ROLES, type MembershipRole } from "./roles.ts";
import { actingIn, memberTenantsOf } from "./tenant-visits.ts";
import { userEmail } from "./users.ts";

/**
 * Anomaly alerts (promise A6). An alert is stored for the user it is about and for the owners and admins of
 * the tenants that see it, and mailed: to the user always (once their address is verified), to the tenants'
 * owners and admins when it is a warning. Everything is written in the caller's transaction, so an alert
 * stands or falls with what raised it, and each stored alert records `alert.raised` on its chain.
 */

/**
 * Warnings call for a look now (someone may be in the account, or was just given power); the rest confirm
 * what the user most likely did themselves.
 */
export const ALERT_SEVERITY: Readonly<Record<AlertKind, AlertSeverity>> = {
  "failed-sign-in-burst": "warning",
  "sign-in-after-failures": "warning",
  "new-device": "info",
  "factor-added": "info",
  "factor-removed": "warning",
  "backup-code-used": "info",
  "api-key-created": "warning",
  "privileged-role-granted": "warning",
  "break-glass-used": "warning",
};

export interface NewAlert {
  kind: AlertKind;
  /** The user whose account the alert is about (who acted, or whose account was acted on). */
  userId: string;
  /**
   * The tenant an alert of a tenant happened in (an API key, a role, break-glass): only that tenant sees it.
   * Absent or null: an alert about the account itself, also shown in every tenant the user is a live member of.
   */
  tenantId?: string | null;
  /** Ids, methods, roles and counts only. `factor` and `role`, when present, are named in the mail. */
  details: AlertDetails;
  requestId: string;
}

export type AlertDeps = Pick<IdentityDeps, "audit" | "clock" | "keyRing" | "mailer" | "config">;

/** The web app's pages that list alerts, linked from the mail. */
export const USER_ALERTS_PAGE = "/account/alerts";
export const tenantAlertsPage = (tenantId: string) => `/organizations/${tenantId}/security/alerts`;

interface Recipient {
  id: string;
  email: string;
  display_name: string;
  email_verified_at: Date | null;
}

/** The tenants that see an alert, and who the user is in each. */
interface Placement {
  tenantId: string;
  name: string;
  membershipId: string | null;
}

/** The mail facts an alert's details may carry, kept only when they are what the templates accept. */
function mailFacts(details: AlertDetails): { factor?: AlertFactor; role?: MembershipRole } {
  const { factor, role } = details;
  return {
    ...(ALERT_FACTORS.includes(factor as AlertFactor) ? { factor: factor as AlertFactor } : {}),
    ...(MEMBERSHIP_ROLES.includes(role as MembershipRole) ? { role: role as MembershipRole } : {}),
  };
}

async function placements(tx: Tx, userId: string, tenantId: string | null | undefined): Promise<Placement[]> {
  if (tenantId) {
    const tenant = await tx.selectFrom("tenants").select("name").where("id", "=", tenantId).executeTakeFirstOrThrow();
    const member = await tx
      .selectFrom("user_tenants")
      .select("membership_id")
      .where("user_id", "=", userId)
      .where("member_of", "=", tenantId)
      .executeTakeFirst();
    return [{ tenantId, name: tenant.name, membershipId: member?.membership_id ?? null }];
  }
  return memberTenantsOf(tx, userId);
}

/** The tenant's live owners and admins but `except` (who gets the user's own mail), in the tenant of `tx`. */
function tenantAdmins(tx: Tx, tenantId: string, except: string): Promise<Recipient[]> {
  return tx
    .selectFrom("memberships as m")
    .innerJoin("users as u", "u.id", "m.user_id")
    .select(["u.id", "u.email", "u.display_name", "u.email_verified_at"])
    .where("m.tenant_id", "=", tenantId)
    .where("m.status", "=", "active")
    .where("m.role", "in", ["owner", "admin"])
    .where("m.user_id", "!=", except)
    .orderBy("u.id")
    .execute();
}

/**
 * Raises an alert in the caller's transaction: stores it for the user and for each tenant that sees it, records
 * `alert.raised` for each (the user's on the platform chain, each tenant's on that tenant's security chain),
 * and queues the mail. Returns the id of the user's alert.
 */
export async function raiseAlert(deps: AlertDeps, tx: Tx, alert: NewAlert): Promise<string> {
  const { kind, userId, details, requestId } = alert;
  const severity = ALERT_SEVERITY[kind];
  const now = deps.clock.now();
  const at = now.toISOString();
  const user = await tx
    .selectFrom("users")
    .select(["id", "email", "display_name", "email_verified_at"])
    .where("id", "=", userId)
    .executeTakeFirstOrThrow();
  const places = await placements(tx, userId, alert.tenantId);
  const inTenant = alert.tenantId ? (places[0] as Placement) : undefined;
  const facts = mailFacts(details);

  const id = uuidv7(now.getTime());
  await tx
    .insertInto("user_alerts")
    .values({
      id,
      user_id: userId,
      kind,
      severity,
      in_tenant: inTenant?.tenantId ?? null,
      details: JSON.stringify(details),
      created_at: now,
    })
    .execute();
  await deps.audit.record(tx, {
    tenantId: null,
    stream: "security",
    actor: SYSTEM_ACTOR,
    action: "alert.raised",
    target: { type: "user-alert", id },
    subjects: [userId],
    details: { kind, severity, tenant: inTenant?.tenantId ?? null },
    requestId,
  });
  // An unverified address may be someone else's: it gets no mail until its owner proves it.
  if (user.email_verified_at !== null) {
    await deps.mailer.send(tx, {
      personId: userId,
      purpose: "security",
      channel: "email",
      to: await userEmail(tx, deps.keyRing, user),
      template: userAlertMail.name,
      data: {
        displayName: user.display_name,
        kind,
        at,
        link: pageLink(deps.config.publicUrl, USER_ALERTS_PAGE),
        ...(inTenant ? { organization: inTenant.name } : {}),
        ...facts,
      },
    });
  }

  for (const place of places) {
    await actingIn(tx, place.tenantId, async () => {
      const copy = uuidv7(now.getTime());
      await tx
        .insertInto("tenant_alerts")
        .values({
          tenant_id: place.tenantId,
          id: copy,
          membership_id: place.membershipId,
          kind,
          severity,
          details: JSON.stringify(details),
          created_at: now,
        })
        .execute();
      await deps.audit.record(tx, {
        tenantId: place.tenantId,
        stream: "security",
        actor: SYSTEM_ACTOR,
        action: "alert.raised",
        target: { type: "tenant-alert", id: copy },
        details: { kind, severity, membership: place.membershipId },
        requestId,
      });
      if (severity !== "warning") return;
      for (const admin of await tenantAdmins(tx, place.tenantId, userId)) {
        if (admin.email_verified_at === null) continue;
        await deps.mailer.send(tx, {
          personId: admin.id,
          purpose: "security",
          channel: "email",
          to: await userEmail(tx, deps.keyRing, admin),
          template: tenantAlertMail.name,
          data: {
            displayName: admin.display_name,
            member: user.display_name,
            organization: place.name,
            kind,
            at,
            link: pageLink(deps.config.publicUrl, tenantAlertsPage(place.tenantId)),
            ...facts,
          },
        });
      }
    });
  }
  return id;
}
