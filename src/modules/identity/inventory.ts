import {
  type ColumnEntry,
  defineTable,
  type ModuleInventory,
  notPersonal,
  type Retention,
  type SubjectLocator,
  WITH_TENANT_DATA,
} from "../../platform/inventory/types.ts";
import "./schema.ts";
import "./policy-schema.ts";
import { devicesAlertsInventory } from "./devices-alerts-inventory.ts";
import { byMember, personal, throughMembership } from "./inventory-entries.ts";
import { ssoInventory } from "./sso-inventory.ts";

/**
 * The identity module's tables (migration 0009). A user's account data lives until the account is closed
 * (+ 90 days, P9); sessions, tokens and keys go when they end, sooner than the account.
 */

/** P9: account data until account closure + 90 days. */
const WITH_ACCOUNT: Retention = { anchor: "account-closed", duration: "P90D", action: "delete" };
/** Ended sessions and spent tokens are kept 90 days for the user's session history and investigations. */
const NINETY_DAYS: Retention = { anchor: "event-time", duration: "P90D", action: "delete" };

const account = (purpose: string) => personal("account", purpose, WITH_ACCOUNT);
const sealedUnderPerson = (purpose: string) =>
  personal("account", purpose, WITH_ACCOUNT, { keyScope: "person", erasure: { action: "crypto-shred" } });
/** The blind index of the row's sealed `email` (a master key rotation recomputes it from there). */
const indexOfEmail = (entry: ColumnEntry): ColumnEntry => ({
  ...entry,
  blindIndexOf: { column: "email", kind: "email" },
});
const auth = (purpose: string, retention: Retention = NINETY_DAYS) => personal("authentication", purpose, retention);
const secret = (purpose: string, retention: Retention = NINETY_DAYS) =>
  notPersonal("authentication", `${purpose}; a hash of a random secret, naming no one`, retention);

const users = defineTable("users", {
  owner: "platform",
  row: "one user of Charter: a global identity with memberships in tenants",
  subject: { kind: "column", column: "id", of: "user" },
  columns: {
    id: account("identifies the user; pseudonymous actor id on the platform audit chains"),
    email: sealedUnderPerson("the address the user signs in with and receives account mail at; encrypted"),
    email_index: indexOfEmail(
      account("finds the account by address at sign-in (keyed blind index, no address in clear)"),
    ),
    email_verified_at: account("when the user proved they control the address (unverified accounts get no access)"),
    display_name: account("how the user is named to the members of tenants they share (T7)"),
    avatar_file_id: account("the user's picture, shown beside their display name (T7)"),
    password_hash: auth("checks the password at sign-in (Argon2id; the password itself is never stored)", WITH_ACCOUNT),
    password_changed_at: auth("when the password last changed, shown to the user", WITH_ACCOUNT),
    webauthn_handle: auth("the random user handle the user's passkeys carry instead of their id (A2)", WITH_ACCOUNT),
    privilege_epoch: notPersonal("authentication", "a counter: sessions behind it rotate their token", WITH_ACCOUNT),
    created_at: account("when the account was created"),
    updated_at: account("when the account last changed"),
  },
});

const accountTokens = defineTable("account_tokens", {
  owner: "platform",
  row: "one single-use token sent by email: verification, password reset, email change or its revert",
  subject: { kind: "column", column: "user_id", of: "user" },
  columns: {
    id: notPersonal("authentication", "identifies the token", NINETY_DAYS),
    user_id: auth("the account the token acts on"),
    purpose: notPersonal("authentication", "what redeeming the token does", NINETY_DAYS),
    token_hash: secret("redeems the token (SHA-256; the token is only in the email)"),
    email: personal(
      "account",
      "the address an email change moves to, or its revert returns to; encrypted",
      NINETY_DAYS,
      {
        keyScope: "person",
        erasure: { action: "crypto-shred" },
      },
    ),
    email_index: indexOfEmail(auth("refuses an email change to an address another verified account holds")),
    created_at: auth("when the token was sent"),
    expires_at: auth("when the token stops working (30 minutes for password resets)"),
    used_at: auth("when the token was redeemed: it works once"),
  },
});

const sessions = defineTable("sessions", {
  owner: "platform",
  row: "one signed-in browser or client of a user (A5)",
  subject: { kind: "column", column: "user_id", of: "user" },
  columns: {
    id: auth("identifies the session, so the user can list and revoke it"),
    user_id: auth("the signed-in user"),
    state: auth("active, or waiting for the second factor"),
    factors: auth("how the user authenticated (methods and times): tenant policies and recent authentication"),
    privilege_epoch: auth("the user's privilege epoch when the token was issued: a newer one rotates it"),
    device: auth("the browser and system, so the user recognises their sessions"),
    created_at: auth("when the user signed in"),
    last_seen_at: auth("the last request: the idle timeout"),
    expires_at: auth("the absolute timeout"),
    revoked_at: auth("when the session was ended (sign-out, revocation, removal, password reset)"),
    revoke_reason: auth("why the session was ended"),
  },
});

const sessionTokens = defineTable("session_tokens", {
  owner: "platform",
  row: "one token a session was issued; only the current one is in use, a replaced one for 10 seconds",
  subject: {
    kind: "path",
    via: [{ column: "session_id", references: { table: "sessions", column: "id" }, link: "foreign-key" }],
    of: "user",
  },
  columns: {
    token_hash: secret("finds the session from the cookie (SHA-256 of the token)"),
    session_id: auth("the session the token belongs to"),
    issued_at: auth("when the token was issued"),
    replaced_at: auth("when a new token replaced it"),
    grace_until: auth("until when requests already in flight may still use it"),
  },
});

const operators = defineTable("operators", {
  owner: "platform",
  row: "one operator: a user who runs the platform (creates, suspends and reinstates tenants)",
  subject: { kind: "column", column: "user_id", of: "user" },
  columns: {
    user_id: account("the user who is an operator"),
    created_at: account("when they became one"),
  },
});

const operatorSetupTokens = defineTable("operator_setup_tokens", {
  owner: "platform",
  row: "the one-time setup link shown on the terminal at first start",
  subject: { kind: "column", column: "used_by", of: "user" },
  columns: {
    id: notPersonal("authentication", "identifies the link", NINETY_DAYS),
    token_hash: secret("redeems the link (SHA-256; the link is only shown on the terminal)"),
    created_at: notPersonal("authentication", "when the link was made", NINETY_DAYS),
    expires_at: notPersonal("authentication", "when the link stops working", NINETY_DAYS),
    used_at: notPersonal("authentication", "when the link was used: it works once", NINETY_DAYS),
    used_by: auth("the operator the link created"),
  },
});

const membershipSubject: SubjectLocator<"user_id"> = { kind: "column", column: "user_id", of: "user" };

function member(purpose: string): ColumnEntry {
  return personal("account", purpose, WITH_TENANT_DATA);
}

const memberships = defineTable("memberships", {
  owner: "tenant",
  row: "one user's membership of a tenant, with its role; kept, marked removed, after removal",
  subject: membershipSubject,
  columns: {
    tenant_id: notPersonal("account", "the tenant", WITH_TENANT_DATA),
    id: member("identifies the member inside the tenant: what every tenant table names people by"),
    user_id: member("the one link from the tenant to the global user"),
    role: member("what the member may do (owner, admin, member, viewer, guest)"),
    status: member("active, or removed (kept so history and audit references stay valid)"),
    created_at: member("when the member joined"),
    invited_by: byMember("invited_by", "who invited the member"),
    role_changed_at: member("when the role last changed"),
    removed_at: member("when the member was removed"),
    removed_by: byMember("removed_by", "who removed the member"),
  },
});

const userTenants = defineTable("user_tenants", {
  owner: "platform",
  row: "one live membership, indexed by user: answers which tenants a user is in",
  subject: { kind: "column", column: "user_id", of: "user" },
  columns: {
    user_id: account("the member"),
    member_of: account("a tenant the user is a member of"),
    membership_id: account("the membership in that tenant"),
  },
});

const invitations = defineTable("invitations", {
  owner: "tenant",
  row: "one invitation by email to join a tenant with a role; single use, expiring",
  subject: { kind: "none" },
  columns: {
    tenant_id: notPersonal("account", "the tenant the invitation is to", WITH_TENANT_DATA),
    id: notPersonal("account", "identifies the invitation", WITH_TENANT_DATA),
    email: personal(
      "account",
      "the invited address: only an account that verified it can accept; encrypted",
      NINETY_DAYS,
      {
        keyScope: "tenant",
        erasure: { action: "delete" },
      },
    ),
    email_index: indexOfEmail(personal("account", "finds invitations to an address (keyed blind index)", NINETY_DAYS)),
    role: notPersonal("account", "the role the invitation grants", NINETY_DAYS),
    token_hash: secret("redeems the invitation (SHA-256; the token is only in the email)"),
    invited_by: byMember("invited_by", "who sent the invitation"),
    created_at: notPersonal("account", "when the invitation was sent", NINETY_DAYS),
    expires_at: notPersonal("account", "when it stops working", NINETY_DAYS),
    accepted_at: notPersonal("account", "when it was accepted: it works once", NINETY_DAYS),
    accepted_by: byMember("accepted_by", "the membership it created"),
    revoked_at: notPersonal("account", "when an admin withdrew it", NINETY_DAYS),
  },
});

const apiKeys = defineTable("api_keys", {
  owner: "tenant",
  row: "one API key of a tenant: personal (a member's) or service (the tenant's)",
  subject: throughMembership("membership_id"),
  columns: {
    tenant_id: notPersonal("authentication", "the tenant the key works in", WITH_TENANT_DATA),
    id: notPersonal(
      "authentication",
      "identifies the key; part of the key text, so it is looked up by it",
      WITH_TENANT_DATA,
    ),
    kind: notPersonal("authentication", "personal or service", WITH_TENANT_DATA),
    membership_id: byMember("membership_id", "the member a personal key belongs to (it dies with the membership)"),
    role: notPersonal(
      "authentication",
      "the most the key may do (the lower of it and its owner's role)",
      WITH_TENANT_DATA,
    ),
    name: notPersonal("authentication", "what the key is for, named by its creator", WITH_TENANT_DATA),
    secret_hash: secret("checks the key's secret (SHA-256; the key is shown once)", WITH_TENANT_DATA),
    created_by: byMember("created_by", "who created the key"),
    created_at: notPersonal("authentication", "when the key was created", WITH_TENANT_DATA),
    expires_at: notPersonal("authentication", "when the key stops working", WITH_TENANT_DATA),
    last_used_at: notPersonal("authentication", "when the key was last used, to spot unused keys", WITH_TENANT_DATA),
    revoked_at: notPersonal("authentication", "when the key was revoked", WITH_TENANT_DATA),
    revoked_by: byMember("revoked_by", "who revoked the key"),
  },
});

const factorResets = defineTable("factor_resets", {
  owner: "platform",
  row: "one reset of a user's lost sign-in factors, asked for on the command line and delayed so the user can cancel it",
  subject: { kind: "column", column: "user_id", of: "user" },
  columns: {
    id: auth("identifies the reset"),
    user_id: auth("the account whose factors are reset"),
    requested_at: auth("when the reset was asked for, shown to the user with the time it takes effect"),
    due_at: auth("when the reset takes effect unless the user cancels it"),
    cancelled_at: auth("when the user cancelled the reset"),
    completed_at: auth("when the reset took effect"),
  },
});

const totpFactors = defineTable("totp_factors", {
  owner: "platform",
  row: "a user's authenticator app (TOTP, A2); unconfirmed while the enrolment awaits its first code",
  subject: { kind: "column", column: "user_id", of: "user" },
  columns: {
    user_id: auth("the user the authenticator belongs to", WITH_ACCOUNT),
    secret: personal("authentication", "checks the codes of the user's authenticator app; encrypted", WITH_ACCOUNT, {
      keyScope: "person",
      erasure: { action: "crypto-shred" },
    }),
    created_at: auth("when the enrolment started", WITH_ACCOUNT),
    confirmed_at: auth("when the user proved the enrolment with a first code; only then is it a factor", WITH_ACCOUNT),
    last_used_step: auth("the time step of the last code accepted: a code is never accepted twice", WITH_ACCOUNT),
  },
});

const backupCodes = defineTable("backup_codes", {
  owner: "platform",
  row: "one single-use backup code for a user who lost their authenticator (A2)",
  subject: { kind: "column", column: "user_id", of: "user" },
  columns: {
    id: auth("identifies the code", WITH_ACCOUNT),
    user_id: auth("the user the code belongs to", WITH_ACCOUNT),
    prefix: secret("finds the code's hash, so a guess costs one Argon2id check", WITH_ACCOUNT),
    code_hash: secret("checks the code (Argon2id; the code itself is shown once)", WITH_ACCOUNT),
    created_at: auth("when the code was issued", WITH_ACCOUNT),
    used_at: auth("when the code was used: it works once", WITH_ACCOUNT),
  },
});

const passkeys = defineTable("passkeys", {
  owner: "platform",
  row: "one passkey (WebAuthn credential) of a user: a first or second factor (A2)",
  subject: { kind: "column", column: "user_id", of: "user" },
  columns: {
    id: auth("identifies the passkey, so the user can rename and remove it", WITH_ACCOUNT),
    user_id: auth("the user the passkey belongs to", WITH_ACCOUNT),
    credential_id: auth("the credential id the authenticator presents at sign-in", WITH_ACCOUNT),
    public_key: auth("checks the authenticator's signatures", WITH_ACCOUNT),
    sign_count: auth(
      "the authenticator's signature counter: a cloned authenticator shows as a step back",
      WITH_ACCOUNT,
    ),
    transports: auth("how the browser reaches the authenticator (USB, NFC, internal…)", WITH_ACCOUNT),
    aaguid: auth("the authenticator's model, shown to the user", WITH_ACCOUNT),
    device_type: auth("whether the passkey is bound to one device or synced", WITH_ACCOUNT),
    backed_up: auth("whether the passkey is backed up (synced)", WITH_ACCOUNT),
    name: auth("the name the user gave the passkey", WITH_ACCOUNT),
    created_at: auth("when the passkey was registered", WITH_ACCOUNT),
    last_used_at: auth("when the passkey was last used, shown to the user", WITH_ACCOUNT),
  },
});

const webauthnChallenges = defineTable("webauthn_challenges", {
  owner: "platform",
  row: "one single-use WebAuthn challenge, bound to a session or a pre-authentication cookie",
  subject: { kind: "column", column: "user_id", of: "user" },
  columns: {
    id: auth("identifies the challenge"),
    purpose: notPersonal("authentication", "what the ceremony is for", NINETY_DAYS),
    challenge: secret("the random challenge the authenticator signs"),
    user_id: auth("the user the ceremony is for, when known"),
    session_id: auth("the session the ceremony belongs to"),
    binding_hash: secret("binds a ceremony to the browser or reset link that started it (SHA-256)"),
    created_at: auth("when the ceremony started"),
    expires_at: auth("when the challenge stops working"),
    used_at: auth("when the challenge was answered: it works once"),
  },
});

const securityPolicies = defineTable("security_policies", {
  owner: "tenant",
  row: "a tenant's security policy (A4): MFA, SSO, session lifetime, sign-in methods, API keys, break-glass owner",
  subject: { kind: "none" },
  columns: {
    tenant_id: notPersonal("authentication", "the tenant", WITH_TENANT_DATA),
    id: notPersonal("authentication", "identifies the policy", WITH_TENANT_DATA),
    require_mfa: notPersonal("authentication", "every session must be multi-factor here", WITH_TENANT_DATA),
    require_sso: notPersonal("authentication", "every session must hold this tenant's SSO factor", WITH_TENANT_DATA),
    session_lifetime_minutes: notPersonal("authentication", "how long a sign-in opens the tenant", WITH_TENANT_DATA),
    allowed_methods: notPersonal("authentication", "the sign-in methods that open the tenant", WITH_TENANT_DATA),
    allow_personal_keys: notPersonal("authentication", "whether personal API keys work here", WITH_TENANT_DATA),
    allow_service_keys: notPersonal("authentication", "whether service API keys work here", WITH_TENANT_DATA),
    break_glass_membership_id: byMember(
      "break_glass_membership_id",
      "the owner who may open the security settings while the SSO provider is down",
    ),
    updated_at: notPersonal("authentication", "when the policy last changed", WITH_TENANT_DATA),
    updated_by: byMember("updated_by", "who last changed the policy"),
  },
});

const breakGlassOpenings = defineTable("break_glass_openings", {
  owner: "tenant",
  row: "one break-glass opening of a tenant's security settings by its designated owner, at most an hour long",
  subject: throughMembership("membership_id"),
  columns: {
    tenant_id: notPersonal("authentication", "the tenant", WITH_TENANT_DATA),
    id: notPersonal("authentication", "identifies the opening", WITH_TENANT_DATA),
    membership_id: byMember("membership_id", "the owner who opened it"),
    session_id: personal("authentication", "the session the opening lets in", WITH_TENANT_DATA),
    opened_at: notPersonal("authentication", "when it was opened", WITH_TENANT_DATA),
    expires_at: notPersonal("authentication", "when it closes (one hour at most)", WITH_TENANT_DATA),
  },
});

/** The identity module's tables: migrations 0009 to 0014. */
export const identityInventory: ModuleInventory = {
  module: "identity",
  tables: [
    users,
    accountTokens,
    sessions,
    sessionTokens,
    operators,
    operatorSetupTokens,
    memberships,
    userTenants,
    invitations,
    apiKeys,
    factorResets,
    totpFactors,
    backupCodes,
    passkeys,
    webauthnChallenges,
    securityPolicies,
    breakGlassOpenings,
    ...devicesAlertsInventory,
    ...ssoInventory,
  ],
};
