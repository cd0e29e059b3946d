import type { ColumnType } from "kysely";

declare module "../../platform/db/schema.ts" {
  interface Tables {
    security_policies: SecurityPoliciesTable;
    break_glass_openings: BreakGlassOpeningsTable;
  }
}

/** The first factors a tenant may accept: the ways a person signs in. */
export const SIGN_IN_METHODS = ["password", "passkey", "sso"] as const;
export type SignInMethod = (typeof SIGN_IN_METHODS)[number];

/** Migration 0014. A tenant's security policy (A4); no row means the defaults. */
/** A column with a default in the migration: optional when a row is inserted. */
type Defaulted<T> = ColumnType<T, T | undefined, T>;

export interface SecurityPoliciesTable {
  tenant_id: string;
  id: string;
  require_mfa: Defaulted<boolean>;
  require_sso: Defaulted<boolean>;
  session_lifetime_minutes: Defaulted<number | null>;
  allowed_methods: Defaulted<SignInMethod[]>;
  allow_personal_keys: Defaulted<boolean>;
  allow_service_keys: Defaulted<boolean>;
  break_glass_membership_id: Defaulted<string | null>;
  updated_at: ColumnType<Date, Date | string, Date | string>;
  updated_by: Defaulted<string | null>;
}

/** Migration 0014. A break-glass opening of a tenant's security settings, at most one hour long. */
export interface BreakGlassOpeningsTable {
  tenant_id: string;
  id: string;
  membership_id: string;
  session_id: string;
  opened_at: ColumnType<Date, Date | string, never>;
  expires_at: ColumnType<Date, Date | string, never>;
}
