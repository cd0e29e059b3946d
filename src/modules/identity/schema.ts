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
    totp_factors: TotpFactorsTable;
    backup_codes: BackupCodesTable;
    passkeys: PasskeysTable;
    webauthn_challenges: WebauthnChallengesTable;
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
  /** Migration 0011: the random WebAuthn user handle of the user's passkeys (created with the first one). */
  webauthn_handle: ColumnType<Buffer | null, Buffer | null | undefined, Buffer | null>;
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

/** How a factor proved the user: methods that are something the user knows, and those they have. */
export type FactorMethod = "password" | "email-link" | "totp" | "backup-code" | "passkey" | "sso";

/** One way the user proved who they are, kept on the session in the order proven (A2, A3, A5). */
export interface SessionFactor {
  method: FactorMethod;
  /** ISO 8601. */
  at: string;
  /** Passkeys: the authenticator verified the user (PIN or biometrics); only then is a passkey multi-factor. */
  userVerified?: boolean;
  /** SSO: the tenant whose provider proved it; the factor counts in that tenant only. */
  tenantId?: string;
  /** SSO: the configuration that proved it. */
  configurationId?: string;
  /** SSO: the provider's `amr` included a value the tenant accepts as multi-factor. */
  mfa?: boolean;
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

/** Migration 0011. A user's authenticator app; confirmed_at null while the enrolment awaits its first code. */
export interface TotpFactorsTable {
  user_id: string;
  /** Envelope of the base32 secret under the user's person key. */
  secret: string;
  created_at: CreatedAt;
  confirmed_at: NullableTime;
  /** The last accepted time step (unix seconds / 30); a code of that step or earlier is a replay. */
  last_used_step: ColumnType<string | null, number | null | undefined, number | null>;
}

/** Migration 0011. Single-use backup codes, found by prefix and checked with Argon2id. */
export interface BackupCodesTable {
  id: string;
  user_id: string;
  prefix: string;
  code_hash: string;
  created_at: CreatedAt;
  used_at: NullableTime;
}

export type PasskeyDeviceType = "singleDevice" | "multiDevice";

/** Migration 0011. A registered WebAuthn credential. */
export interface PasskeysTable {
  id: string;
  user_id: string;
  credential_id: Buffer;
  /** COSE public key. */
  public_key: Buffer;
  sign_count: ColumnType<string, number, number>;
  transports: ColumnType<string[], string[] | undefined, string[]>;
  aaguid: string | null;
  device_type: PasskeyDeviceType;
  backed_up: boolean;
  name: string;
  created_at: CreatedAt;
  last_used_at: NullableTime;
}

export type WebauthnChallengePurpose = "register" | "sign-in" | "second-factor" | "reauthenticate" | "password-reset";

/** Migration 0011. A single-use WebAuthn challenge bound to a session or to a pre-authentication cookie. */
export interface WebauthnChallengesTable {
  id: string;
  purpose: WebauthnChallengePurpose;
  challenge: string;
  user_id: string | null;
  session_id: string | null;
  binding_hash: Buffer | null;
  created_at: CreatedAt;
  expires_at: ColumnType<Date, Date | string, never>;
  used_at: NullableTime;
}
