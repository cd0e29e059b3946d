import type { ColumnType } from "kysely";
import type { MembershipRole } from "./roles.ts";

declare module "../../platform/db/schema.ts" {
  interface Tables {
    users: UsersTable;
    account_tokens: AccountTokensTable;
    sessions: SessionsTable;
    session_tokens: SessionTokensTable;
    operators: OperatorsTable;
    operator_setup_tokens: OperatorSetupTokensTable;
    memberships: MembershipsTable;
    user_tenants: UserTenantsTable;
    invitations: InvitationsTable;
    api_keys: ApiKeysTable;
    factor_resets: FactorResetsTable;
  }
}

type CreatedAt = ColumnType<Date, Date | string, never>;
type Time = ColumnType<Date, Date | string, Date | string>;
type NullableTime = ColumnType<Date | null, Date | string | null | undefined, Date | string | null>;

/** Migration 0009. A user is one global identity. */
export interface UsersTable {
  id: string;
  /** Key ring envelope of the address, under the user's person key. */
  email: string;
  /** Blind index (platform scope) of the normalised address. */
  email_index: Buffer;
  email_verified_at: NullableTime;
  display_name: string;
  avatar_file_id: ColumnType<string | null, string | null | undefined, string | null>;
  /** Argon2id PHC string; null for an account without a password. */
  password_hash: ColumnType<string | null, string | null | undefined, string | null>;
  password_changed_at: NullableTime;
  privilege_epoch: ColumnType<number, number | undefined, number>;
  created_at: CreatedAt;
  updated_at: Time;
}

export const ACCOUNT_TOKEN_PURPOSES = ["verify-email", "reset-password", "change-email", "revert-email"] as const;
export type AccountTokenPurpose = (typeof ACCOUNT_TOKEN_PURPOSES)[number];

export interface AccountTokensTable {
  id: string;
  user_id: string;
  purpose: AccountTokenPurpose;
  /** SHA-256 of the token. */
  token_hash: Buffer;
  /** change-email: the new address; revert-email: the old one (envelope under the person key). */
  email: string | null;
  email_index: Buffer | null;
  created_at: CreatedAt;
  expires_at: ColumnType<Date, Date | string, never>;
  used_at: NullableTime;
}

/** One way the user proved who they are, kept on the session (A5; MFA and SSO add methods). */
export interface SessionFactor {
  method: "password" | "email-link" | "totp" | "backup-code" | "passkey" | "sso";
  /** ISO 8601. */
  at: string;
  /** For SSO: the tenant whose provider proved it (the factor counts there only). */
  tenantId?: string;
}

export type SessionState = "active" | "pending-second-factor";

export interface SessionsTable {
  id: string;
  user_id: string;
  state: SessionState;
  factors: ColumnType<SessionFactor[], string, string>;
  privilege_epoch: number;
  device: string | null;
  created_at: CreatedAt;
  last_seen_at: Time;
  expires_at: Time;
  revoked_at: NullableTime;
  revoke_reason: ColumnType<string | null, string | null | undefined, string | null>;
}

export interface SessionTokensTable {
  token_hash: Buffer;
  session_id: string;
  issued_at: CreatedAt;
  replaced_at: NullableTime;
  grace_until: NullableTime;
}

export interface OperatorsTable {
  user_id: string;
  created_at: CreatedAt;
}

export interface OperatorSetupTokensTable {
  id: string;
  token_hash: Buffer;
  created_at: CreatedAt;
  expires_at: ColumnType<Date, Date | string, never>;
  used_at: NullableTime;
  used_by: ColumnType<string | null, string | null | undefined, string | null>;
}

export type MembershipStatus = "active" | "removed";

export interface MembershipsTable {
  tenant_id: string;
  id: string;
  user_id: string;
  role: MembershipRole;
  status: MembershipStatus;
  created_at: CreatedAt;
  invited_by: ColumnType<string | null, string | null | undefined, never>;
  role_changed_at: NullableTime;
  removed_at: NullableTime;
  removed_by: ColumnType<string | null, string | null | undefined, string | null>;
}

export interface UserTenantsTable {
  user_id: string;
  /** The tenant (a platform table: not named tenant_id). */
  member_of: string;
  membership_id: string;
}

export interface InvitationsTable {
  tenant_id: string;
  id: string;
  /** Envelope of the invited address under the tenant key. */
  email: string;
  /** Blind index (tenant scope) of the normalised address. */
  email_index: Buffer;
  role: MembershipRole;
  token_hash: Buffer;
  invited_by: string | null;
  created_at: CreatedAt;
  expires_at: ColumnType<Date, Date | string, never>;
  accepted_at: NullableTime;
  accepted_by: ColumnType<string | null, string | null | undefined, string | null>;
  revoked_at: NullableTime;
}

export type ApiKeyKind = "personal" | "service";

export interface ApiKeysTable {
  tenant_id: string;
  id: string;
  kind: ApiKeyKind;
  membership_id: string | null;
  role: Exclude<MembershipRole, "guest">;
  name: string;
  /** SHA-256 of the secret part of the key. */
  secret_hash: Buffer;
  created_by: string;
  created_at: CreatedAt;
  expires_at: ColumnType<Date, Date | string, never>;
  last_used_at: NullableTime;
  revoked_at: NullableTime;
  revoked_by: ColumnType<string | null, string | null | undefined, string | null>;
}

/** Migration 0010. A reset of a user's lost sign-in factors, pending until due_at unless cancelled. */
export interface FactorResetsTable {
  id: string;
  user_id: string;
  requested_at: CreatedAt;
  due_at: ColumnType<Date, Date | string, never>;
  cancelled_at: NullableTime;
  completed_at: NullableTime;
}
