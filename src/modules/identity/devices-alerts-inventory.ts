import {
  defineTable,
  notPersonal,
  type Retention,
  type TableInventory,
  WITH_TENANT_DATA,
} from "../../platform/inventory/types.ts";
import "./devices-alerts-schema.ts";
import { ONE_DAY, personal, throughMembership } from "./inventory-entries.ts";

/**
 * The tables of migration 0013 (promise A6): authentication backoff, known devices, failed sign-in counts and
 * alerts. Counters go when their quiet spell ends; devices a year after their last sign-in; alerts after a
 * year, long enough to look back on an incident.
 */

/** A backoff counter is swept an hour after it expires (its own expires_at). */
const AFTER_EXPIRY: Retention = { anchor: "window-ended", duration: "PT1H", action: "delete" };
const ONE_YEAR: Retention = { anchor: "event-time", duration: "P1Y", action: "delete" };

/**
 * Kept to protect the account against those who would break into it (a legitimate interest of its owner and of
 * the platform), rather than to provide the service itself.
 */
const auth = (purpose: string, retention: Retention) =>
  personal("authentication", purpose, retention, { legalBasis: "legitimate-interest" });

// A keyed HMAC of an address, account or device with the flow it counts: pseudonymous, since the platform holds
// the key; erasure cannot find a row from a person (the hash does not reverse), so rows go when they expire.
const backoff = (purpose: string) => ({ ...auth(purpose, AFTER_EXPIRY), category: "telemetry" as const });

const authBackoff = defineTable("auth_backoff", {
  owner: "platform",
  row: "the failures of one account, source address or known device in one flow (sign-in, second factor…)",
  subject: { kind: "none" },
  columns: {
    key_hash: backoff("holds back guessing: a keyed hash of the flow and the address, account or device"),
    failures: backoff("how many attempts failed since the counter started"),
    last_failure_at: backoff("when the last attempt failed"),
    blocked_until: backoff("until when attempts are refused without being checked (growing backoff)"),
    expires_at: backoff("when the counter is forgotten after a quiet spell"),
  },
});

const knownDevices = defineTable("known_devices", {
  owner: "platform",
  row: "one browser that signed in to an account (its device cookie, by hash)",
  subject: { kind: "column", column: "user_id", of: "user" },
  columns: {
    id: auth("identifies the device, which has a backoff counter of its own", ONE_YEAR),
    user_id: auth("the account the browser signed in to", ONE_YEAR),
    token_hash: notPersonal(
      "authentication",
      "recognises the browser (SHA-256 of a random cookie), so a lockout of the account spares it",
      ONE_YEAR,
    ),
    first_seen_at: auth("when the browser first signed in: a sign-in from a new one raises an alert", ONE_YEAR),
    last_seen_at: auth("when the browser last signed in; a year later it is forgotten", ONE_YEAR),
  },
});

const signInFailures = defineTable("sign_in_failures", {
  owner: "platform",
  row: "the failed sign-ins of one account since its last success, for its alerts",
  subject: { kind: "column", column: "user_id", of: "user" },
  columns: {
    user_id: auth("the account someone failed to sign in to", ONE_DAY),
    since_success: auth("failures since the last success: a success after several raises an alert", ONE_DAY),
    window_started_at: auth("when the current 15-minute window began", ONE_DAY),
    in_window: auth("failures in the current window: a burst raises an alert", ONE_DAY),
    burst_alerted_at: auth("when the burst alert was raised, so it is raised once per window", ONE_DAY),
    last_failure_at: auth("when the last attempt failed; a day later the count is forgotten", ONE_DAY),
  },
});

const alert = (purpose: string) => auth(purpose, ONE_YEAR);

const userAlerts = defineTable("user_alerts", {
  owner: "platform",
  row: "one alert about a user's account (A6), shown to the user",
  subject: { kind: "column", column: "user_id", of: "user" },
  columns: {
    id: alert("identifies the alert, so the user can mark it read"),
    user_id: alert("the account the alert is about"),
    kind: alert("what happened (failed sign-ins, new device, factor change, API key, role, break-glass)"),
    severity: alert("warning or info; warnings are also mailed to the tenants' owners and admins"),
    in_tenant: alert("the organization a tenant's alert happened in"),
    details: alert("ids, methods and counts of what happened; no personal data"),
    created_at: alert("when it happened"),
    read_at: alert("when the user marked it read"),
  },
});

const tenantAlerts = defineTable("tenant_alerts", {
  owner: "tenant",
  row: "one alert shown to a tenant's owners and admins: raised in the tenant, or about a member's account",
  subject: throughMembership("membership_id"),
  columns: {
    tenant_id: notPersonal("authentication", "the tenant whose owners and admins see the alert", WITH_TENANT_DATA),
    id: alert("identifies the alert"),
    membership_id: alert("the member the alert is about"),
    kind: alert("what happened"),
    severity: alert("warning or info"),
    details: alert("ids, methods and counts of what happened; no personal data"),
    created_at: alert("when it happened"),
  },
});

/** Composed into the identity module's inventory. */
export const devicesAlertsInventory: readonly TableInventory[] = [
  authBackoff,
  knownDevices,
  signInFailures,
  userAlerts,
  tenantAlerts,
];
