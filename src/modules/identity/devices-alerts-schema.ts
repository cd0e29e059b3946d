import type { ColumnType } from "kysely";

/** The tables of migration 0013: authentication backoff, known devices and alerts (promise A6). */

declare module "../../platform/db/schema.ts" {
  interface Tables {
    auth_backoff: AuthBackoffTable;
    known_devices: KnownDevicesTable;
    sign_in_failures: SignInFailuresTable;
    user_alerts: UserAlertsTable;
    tenant_alerts: TenantAlertsTable;
  }
}

type CreatedAt = ColumnType<Date, Date | string, never>;
type Time = ColumnType<Date, Date | string, Date | string>;
type NullableTime = ColumnType<Date | null, Date | string | null | undefined, Date | string | null>;

/** A growing-backoff counter, keyed by an HMAC of (flow, key kind, key). */
export interface AuthBackoffTable {
  key_hash: Buffer;
  failures: number;
  last_failure_at: Time;
  blocked_until: NullableTime;
  expires_at: Time;
}

/** A browser that signed in to an account before (SHA-256 of its device cookie). */
export interface KnownDevicesTable {
  id: string;
  user_id: string;
  token_hash: Buffer;
  first_seen_at: CreatedAt;
  last_seen_at: Time;
}

/** The failed sign-ins of an existing account, as its alerts count them. */
export interface SignInFailuresTable {
  user_id: string;
  since_success: number;
  window_started_at: Time;
  in_window: number;
  burst_alerted_at: NullableTime;
  last_failure_at: Time;
}

export const ALERT_KINDS = [
  "failed-sign-in-burst",
  "sign-in-after-failures",
  "new-device",
  "factor-added",
  "factor-removed",
  "backup-code-used",
  "api-key-created",
  "privileged-role-granted",
  "break-glass-used",
] as const;
export type AlertKind = (typeof ALERT_KINDS)[number];

export const ALERT_SEVERITIES = ["info", "warning"] as const;
export type AlertSeverity = (typeof ALERT_SEVERITIES)[number];

/** What an alert records beyond its kind: ids, methods, roles and counts, never personal data or secrets. */
export type AlertDetails = Readonly<Record<string, string | number | boolean | null>>;

export interface UserAlertsTable {
  id: string;
  user_id: string;
  kind: AlertKind;
  severity: AlertSeverity;
  /** The tenant the alert happened in, for a tenant's alert; null for one about the account alone. */
  in_tenant: string | null;
  details: ColumnType<AlertDetails, string, never>;
  created_at: CreatedAt;
  read_at: NullableTime;
}

export interface TenantAlertsTable {
  tenant_id: string;
  id: string;
  /** The member the alert is about; null when it is about no one member. */
  membership_id: string | null;
  kind: AlertKind;
  severity: AlertSeverity;
  details: ColumnType<AlertDetails, string, never>;
  created_at: CreatedAt;
}
