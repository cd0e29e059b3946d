import { randomBytes } from "node:crypto";
import {
  type AuthenticationResponseJSON,
  generateAuthenticationOptions,
  generateRegistrationOptions,
  type PublicKeyCredentialCreationOptionsJSON,
  type PublicKeyCredentialRequestOptionsJSON,
  type RegistrationResponseJSON,
  verifyAuthenticationResponse,
  verifyRegistrationResponse,
} from "@simplewebauthn/server";
import { type Selectable, sql } from "kysely";
import type { Actor } from "../../platform/audit/index.ts";
import type { Tx } from "../../platform/db/index.ts";
import { uuidv7 } from "../../platform/ids.ts";
import type { AlertDeps } from "./alerts.ts";
import type { IdentityDeps } from "./deps.ts";
import type { PasskeyDeviceType, PasskeysTable, WebauthnChallengePurpose } from "./schema.ts";
import { countFailedSignIn } from "./sign-in-alerts.ts";
import { type BackoffTarget, recordFailure } from "./throttle.ts";
import { hashToken, sameHash } from "./tokens.ts";
import { userEmail } from "./users.ts";

/**
 * Passkeys (promise A2): WebAuthn credentials registered by a signed-in user, then used to sign in (as the
 * first factor, a discoverable credential naming its user by the user handle), to prove the second factor of
 * a half-session, or to step up. The relying party is the deployment itself: its id is PUBLIC_URL's host and
 * the only origin accepted is PUBLIC_URL's origin. User verification (PIN or biometrics) is required in every
 * ceremony; a passkey counts as multi-factor only when the assertion was user-verified and its user handle
 * matched the account, which is what the recorded factor's `userVerified` says.
 *
 * Every ceremony runs on a challenge of ours, single use, 5 minutes, for one purpose, and bound to what asked
 * for it: the session (registration, second factor, step-up) or a pre-authentication cookie's SHA-256 (sign-in,
 * before anyone is known). The challenge is consumed before the response is verified, in a transaction of its
 * own, so a failed attempt burns it too. The signature counter only moves forward, through a conditional
 * update, so a cloned authenticator (or a replayed assertion racing the real one) is refused.
 */

/** How long a ceremony may take, from its options to its response. */
export const CHALLENGE_LIFETIME_MS = 5 * 60_000;
/** The name authenticators show for the relying party. */
export const RELYING_PARTY_NAME = "Charter";
/** EdDSA, ES256, RS256: what platform authenticators and security keys use (no experimental algorithms). */
const ALGORITHMS = [-8, -7, -257];
/** A random WebAuthn user handle (user.id): the authenticator never learns the account's own id. */
const USER_HANDLE_BYTES = 32;
/** The credential id length WebAuthn allows (and the passkeys table checks). */
const CREDENTIAL_ID_BYTES = { min: 16, max: 1023 } as const;
/** The transports WebAuthn defines; anything else a client sends is dropped, not stored. */
const TRANSPORTS: readonly string[] = ["ble", "cable", "hybrid", "internal", "nfc", "smart-card", "usb"];

/** Why a ceremony was refused, as audited (auth.passkey-failed) and tested. */
export type PasskeyFailureReason =
  | "challenge"
  | "unknown-credential"
  | "known-credential"
  | "invalid-credential-id"
  | "wrong-origin"
  | "wrong-rp-id"
  | "user-not-present"
  | "user-not-verified"
  | "bad-signature"
  | "counter-regression"
  | "user-handle-mismatch"
  | "invalid-response";

/** A refused ceremony. Routes audit the reason and answer without it (the client learns only "refused"). */
export class PasskeyFailure extends Error {
  override name = "PasskeyFailure";
  readonly reason: PasskeyFailureReason;
  /** The owner of the credential presented, when it is known (a sign-in refused after the lookup). */
  readonly ownerId: string | null;
  constructor(reason: PasskeyFailureReason, ownerId: string | null = null) {
    super(`passkey ceremony refused: ${reason}`);
    this.reason = reason;
    this.ownerId = ownerId;
  }
}

/** What a challenge is bound to: the session that asked for it, or the SHA-256 of a pre-authentication cookie. */
export type ChallengeBinding = { sessionId: string } | { bindingHash: Buffer };

export interface RelyingParty {
  id: string;
  origin: string;
}

export function relyingParty(publicUrl: URL): RelyingParty {
  return { id: publicUrl.hostname, origin: publicUrl.origin };
}

/** Issues a challenge for one ceremony; an earlier unused one of the same purpose and binding stops working. */
async function storeChallenge(
  tx: Tx,
  input: { purpose: WebauthnChallengePurpose; challenge: string; userId: string | null; binding: ChallengeBinding },
  now: Date,
): Promise<void> {
  // Expired challenges are of no use to anyone: each new one clears them (an index on expires_at finds them).
  await tx.deleteFrom("webauthn_challenges").where("expires_at", "<=", now).execute();
  let earlier = tx.deleteFrom("webauthn_challenges").where("purpose", "=", input.purpose).where("used_at", "is", null);
  earlier =
    "sessionId" in input.binding
      ? earlier.where("session_id", "=", input.binding.sessionId)
      : earlier.where("binding_hash", "=", input.binding.bindingHash);
  await earlier.execute();
  await tx
    .insertInto("webauthn_challenges")
    .values({
      id: uuidv7(now.getTime()),
      purpose: input.purpose,
      challenge: input.challenge,
      user_id: input.userId,
      session_id: "sessionId" in input.binding ? input.binding.sessionId : null,
      binding_hash: "bindingHash" in input.binding ? input.binding.bindingHash : null,
      created_at: now,
      expires_at: new Date(now.getTime() + CHALLENGE_LIFETIME_MS),
    })
    .execute();
}

/**
 * Marks the challenge used if it is live, of this purpose and of this binding; returns the user it was issued
 * for (null for a sign-in, before anyone is known), or undefined when there is no such challenge (unknown,
 * expired, used, another purpose, another session or cookie). Conditional, so two racing responses cannot
 * both consume it.
 */
async function consumeChallenge(
  tx: Tx,
  input: { purpose: WebauthnChallengePurpose; challenge: string; binding: ChallengeBinding },
  now: Date,
): Promise<{ userId: string | null } | undefined> {
  let query = tx
    .updateTable("webauthn_challenges")
    .set({ used_at: now })
    .where("purpose", "=", input.purpose)
    .where("challenge", "=", input.challenge)
    .where("used_at", "is", null)
    .where("expires_at", ">", now);
  query =
    "sessionId" in input.binding
      ? query.where("session_id", "=", input.binding.sessionId)
      : query.where("binding_hash", "=", input.binding.bindingHash);
  const row = await query.returning("user_id").executeTakeFirst();
  return row && { userId: row.user_id };
}

/** The challenge the client data of a response carries, or undefined when it is not readable client data. */
function challengeOf(clientDataJSON: string): string | undefined {
  try {
    const data: unknown = JSON.parse(Buffer.from(clientDataJSON, "base64url").toString("utf8"));
    const challenge = (data as { challenge?: unknown } | null)?.challenge;
    return typeof challenge === "string" && /^[A-Za-z0-9_-]{43,128}$/.test(challenge) ? challenge : undefined;
  } catch {
    return undefined;
  }
}

/** What the WebAuthn library's refusal means, from its message (the library has no error codes). */
function reasonOf(error: unknown): PasskeyFailureReason {
  const message = error instanceof Error ? error.message : "";
  if (/origin/i.test(message)) return "wrong-origin";
  if (/RP ID/i.test(message)) return "wrong-rp-id";
  if (/user verification/i.test(message)) return "user-not-verified";
  if (/user (presence|not present|was not present)/i.test(message)) return "user-not-present";
  if (/counter/i.test(message)) return "counter-regression";
  return "invalid-response";
}

/** The user's handle, created (random) the first time they register a passkey. */
async function userHandle(tx: Tx, userId: string): Promise<Buffer> {
  await tx
    .updateTable("users")
    .set({ webauthn_handle: randomBytes(USER_HANDLE_BYTES) })
    .where("id", "=", userId)
    .where("webauthn_handle", "is", null)
    .execute();
  const row = await tx.selectFrom("users").select("webauthn_handle").where("id", "=", userId).executeTakeFirstOrThrow();
  return row.webauthn_handle as Buffer;
}

const descriptor = (row: { credential_id: Buffer; transports: string[] }) => ({
  id: Buffer.from(row.credential_id).toString("base64url"),
  transports: row.transports,
});

/**
 * Registration options for the signed-in user (navigator.credentials.create): a discoverable credential with
 * user verification, none of the user's existing credentials again, and a challenge bound to the session.
 */
export async function registrationOptions(
  tx: Tx,
  deps: Pick<IdentityDeps, "keyRing" | "config">,
  input: { userId: string; sessionId: string; now: Date },
): Promise<PublicKeyCredentialCreationOptionsJSON> {
  const user = await tx
    .selectFrom("users")
    .select(["id", "email", "display_name"])
    .where("id", "=", input.userId)
    .executeTakeFirstOrThrow();
  const handle = await userHandle(tx, user.id);
  const existing = await tx
    .selectFrom("passkeys")
    .select(["credential_id", "transports"])
    .where("user_id", "=", user.id)
    .execute();
  const options = await generateRegistrationOptions({
    rpName: RELYING_PARTY_NAME,
    rpID: relyingParty(deps.config.publicUrl).id,
    // Shown by the authenticator to tell the user's accounts apart; it stays on the user's own device.
    userName: await userEmail(tx, deps.keyRing, user),
    userDisplayName: user.display_name,
    userID: new Uint8Array(handle),
    timeout: CHALLENGE_LIFETIME_MS,
    attestationType: "none",
    excludeCredentials: existing.map(descriptor),
    authenticatorSelection: { residentKey: "required", userVerification: "required" },
    supportedAlgorithmIDs: ALGORITHMS,
  });
  await storeChallenge(
    tx,
    { purpose: "register", challenge: options.challenge, userId: user.id, binding: { sessionId: input.sessionId } },
    input.now,
  );
  return options;
}

/** A credential the authenticator created and proved, not stored yet. */
export interface VerifiedRegistration {
  credentialId: Buffer;
  publicKey: Buffer;
  counter: number;
  transports: string[];
  aaguid: string;
  deviceType: PasskeyDeviceType;
  backedUp: boolean;
}

/**
 * Checks a registration response: the session's live registration challenge (consumed now, whatever
 * follows), then the library's checks (type, challenge, origin, RP id hash, user presence and verification,
 * the algorithm, and the attestation statement: "none" or a valid "packed" one). Throws PasskeyFailure.
 */
export async function verifyRegistration(
  deps: Pick<IdentityDeps, "db" | "config">,
  input: { userId: string; sessionId: string; response: RegistrationResponseJSON; now: Date },
): Promise<VerifiedRegistration> {
  const challenge = challengeOf(input.response.response.clientDataJSON);
  if (challenge === undefined) throw new PasskeyFailure("challenge");
  const consumed = await deps.db.withPlatform((tx) =>
    consumeChallenge(tx, { purpose: "register", challenge, binding: { sessionId: input.sessionId } }, input.now),
  );
  if (!consumed || consumed.userId !== input.userId) throw new PasskeyFailure("challenge");
  const rp = relyingParty(deps.config.publicUrl);
  let result: Awaited<ReturnType<typeof verifyRegistrationResponse>>;
  try {
    result = await verifyRegistrationResponse({
      response: input.response,
      expectedChallenge: challenge,
      expectedOrigin: rp.origin,
      expectedRPID: rp.id,
      requireUserVerification: true,
      supportedAlgorithmIDs: ALGORITHMS,
    });
  } catch (error) {
    throw new PasskeyFailure(reasonOf(error));
  }
  if (!result.verified) throw new PasskeyFailure("bad-signature");
  const info = result.registrationInfo;
  const credentialId = Buffer.from(info.credential.id, "base64url");
  if (credentialId.length < CREDENTIAL_ID_BYTES.min || credentialId.length > CREDENTIAL_ID_BYTES.max) {
    throw new PasskeyFailure("invalid-credential-id");
  }
  const transports = (input.response.response.transports ?? []).filter((transport) => TRANSPORTS.includes(transport));
  return {
    credentialId,
    publicKey: Buffer.from(info.credential.publicKey),
    counter: info.credential.counter,
    transports: [...new Set(transports)],
    aaguid: info.aaguid,
    deviceType: info.credentialDeviceType,
    backedUp: info.credentialBackedUp,
  };
}

/**
 * Stores a verified credential under `name`; a credential id already known (to this user or any other) is
 * refused (PasskeyFailure "known-credential"), by the unique index, so two racing registrations cannot both
 * store it. Returns the new passkey's id.
 */
export async function savePasskey(
  tx: Tx,
  input: { userId: string; name: string; credential: VerifiedRegistration; now: Date },
): Promise<string> {
  const { credential, now } = input;
  const inserted = await tx
    .insertInto("passkeys")
    .values({
      id: uuidv7(now.getTime()),
      user_id: input.userId,
      credential_id: credential.credentialId,
      public_key: credential.publicKey,
      sign_count: credential.counter,
      transports: credential.transports,
      aaguid: credential.aaguid,
      device_type: credential.deviceType,
      backed_up: credential.backedUp,
      name: input.name,
      created_at: now,
    })
    .onConflict((conflict) => conflict.column("credential_id").doNothing())
    .returning("id")
    .executeTakeFirst();
  if (!inserted) throw new PasskeyFailure("known-credential");
  return inserted.id;
}

/** The ceremonies that end in an assertion (navigator.credentials.get). */
export type AssertionPurpose = Exclude<WebauthnChallengePurpose, "register">;

/**
 * Assertion options. With `userId`, the user's own credentials are offered (second factor, step-up, reset),
 * and there are none (and no challenge is stored) when the user has no passkey; without, the request is for
 * a discoverable credential (sign-in, before anyone is known).
 */
export async function assertionOptions(
  tx: Tx,
  deps: Pick<IdentityDeps, "config">,
  input: { purpose: AssertionPurpose; userId: string | null; binding: ChallengeBinding; now: Date },
): Promise<PublicKeyCredentialRequestOptionsJSON | undefined> {
  const allowed =
    input.userId === null
      ? []
      : await tx
          .selectFrom("passkeys")
          .select(["credential_id", "transports"])
          .where("user_id", "=", input.userId)
          .orderBy("created_at")
          .execute();
  if (input.userId !== null && allowed.length === 0) return undefined;
  const options = await generateAuthenticationOptions({
    rpID: relyingParty(deps.config.publicUrl).id,
    allowCredentials: allowed.map(descriptor),
    timeout: CHALLENGE_LIFETIME_MS,
    userVerification: "required",
  });
  await storeChallenge(
    tx,
    { purpose: input.purpose, challenge: options.challenge, userId: input.userId, binding: input.binding },
    input.now,
  );
  return options;
}

/** A passkey that just proved its user, with what its assertion said. */
export interface ProvenPasskey {
  passkeyId: string;
  userId: string;
  /** The authenticator's new signature counter. */
  counter: number;
  deviceType: PasskeyDeviceType;
  backedUp: boolean;
  /** The authenticator verified the user (always, as it is required) and returned the account's user handle. */
  userVerified: boolean;
}

/**
 * Checks an assertion: the live challenge of this purpose and binding (consumed now, whatever follows), the
 * credential (of `userId` when given; a sign-in takes the credential's own user), then the library's checks
 * (type, challenge, origin, RP id hash, user presence and verification, counter, signature), then the user
 * handle: a sign-in must return the account's, another ceremony may omit it but not return another. Does not
 * record the use: the caller does, with recordPasskeyUse, in the transaction that acts on it. Throws
 * PasskeyFailure.
 */
export async function verifyAssertion(
  deps: Pick<IdentityDeps, "db" | "config">,
  input: {
    purpose: AssertionPurpose;
    binding: ChallengeBinding;
    userId: string | null;
    response: AuthenticationResponseJSON;
    now: Date;
  },
): Promise<ProvenPasskey> {
  const { response, now } = input;
  const challenge = challengeOf(response.response.clientDataJSON);
  if (challenge === undefined) throw new PasskeyFailure("challenge");
  const credentialId = Buffer.from(response.rawId, "base64url");
  const found = await deps.db.withPlatform(async (tx) => {
    const consumed = await consumeChallenge(tx, { purpose: input.purpose, challenge, binding: input.binding }, now);
    if (!consumed) return undefined;
    const passkey = await tx
      .selectFrom("passkeys as p")
      .innerJoin("users as u", "u.id", "p.user_id")
      .select(["p.id", "p.user_id", "p.credential_id", "p.public_key", "p.sign_count", "u.webauthn_handle"])
      .where("p.credential_id", "=", credentialId)
      .executeTakeFirst();
    return { consumed, passkey };
  });
  if (!found || (input.userId !== null && found.consumed.userId !== input.userId)) {
    throw new PasskeyFailure("challenge");
  }
  const passkey = found.passkey;
  const expectedUser = input.userId ?? found.consumed.userId;
  if (!passkey || (expectedUser !== null && passkey.user_id !== expectedUser)) {
    throw new PasskeyFailure("unknown-credential");
  }
  const rp = relyingParty(deps.config.publicUrl);
  let result: Awaited<ReturnType<typeof verifyAuthenticationResponse>>;
  try {
    result = await verifyAuthenticationResponse({
      response,
      expectedChallenge: challenge,
      expectedOrigin: rp.origin,
      expectedRPID: rp.id,
      requireUserVerification: true,
      credential: {
        id: Buffer.from(passkey.credential_id).toString("base64url"),
        publicKey: new Uint8Array(passkey.public_key),
        counter: Number(passkey.sign_count),
      },
    });
  } catch (error) {
    throw new PasskeyFailure(reasonOf(error), passkey.user_id);
  }
  if (!result.verified) throw new PasskeyFailure("bad-signature", passkey.user_id);

  const returned = response.response.userHandle;
  const handle = passkey.webauthn_handle;
  const handleMatches =
    returned !== undefined && handle !== null && sameHash(Buffer.from(returned, "base64url"), Buffer.from(handle));
  // A discoverable sign-in names its account only by the handle; anywhere, a handle of someone else is wrong.
  if ((input.purpose === "sign-in" || returned !== undefined) && !handleMatches) {
    throw new PasskeyFailure("user-handle-mismatch", passkey.user_id);
  }
  const info = result.authenticationInfo;
  return {
    passkeyId: passkey.id,
    userId: passkey.user_id,
    counter: info.newCounter,
    deviceType: info.credentialDeviceType,
    backedUp: info.credentialBackedUp,
    userVerified: info.userVerified && handleMatches,
  };
}

/**
 * Records a proven assertion: the new counter, if it still moves forward (an authenticator that keeps no
 * counter reports 0 every time), and the last use. False when a concurrent use moved the counter first (or
 * the passkey was removed meanwhile): the assertion must then count for nothing.
 */
export async function claimPasskeyUse(tx: Tx, proven: ProvenPasskey, now: Date): Promise<boolean> {
  const updated = await tx
    .updateTable("passkeys")
    .set({ sign_count: proven.counter, backed_up: proven.backedUp, last_used_at: now })
    .where("id", "=", proven.passkeyId)
    .where(sql<boolean>`(sign_count < ${proven.counter} OR (sign_count = 0 AND ${proven.counter} = 0))`)
    .executeTakeFirst();
  return Number(updated.numUpdatedRows) > 0;
}

/**
 * claimPasskeyUse, refusing with PasskeyFailure "counter-regression" when a concurrent use moved the counter
 * first, or "unknown-credential" when the passkey was removed meanwhile.
 */
export async function recordPasskeyUse(tx: Tx, proven: ProvenPasskey, now: Date): Promise<void> {
  if (await claimPasskeyUse(tx, proven, now)) return;
  const exists = await tx.selectFrom("passkeys").select("id").where("id", "=", proven.passkeyId).executeTakeFirst();
  throw new PasskeyFailure(exists ? "counter-regression" : "unknown-credential", proven.userId);
}

/**
 * The binding of a password reset's passkey ceremony: the reset link's token (only its SHA-256 is kept), so
 * that the assertion counts only with the link it was asked for.
 */
export function resetLinkBinding(token: string): ChallengeBinding {
  return { bindingHash: hashToken(token) };
}

/** A passkey as its owner sees it in their list. */
export interface PasskeySummary {
  id: string;
  name: string;
  deviceType: PasskeyDeviceType;
  backedUp: boolean;
  transports: string[];
  createdAt: string;
  lastUsedAt: string | null;
}

const SUMMARY_COLUMNS = [
  "id",
  "name",
  "device_type",
  "backed_up",
  "transports",
  "created_at",
  "last_used_at",
] as const satisfies readonly (keyof PasskeysTable)[];

function summaryOf(row: Pick<Selectable<PasskeysTable>, (typeof SUMMARY_COLUMNS)[number]>): PasskeySummary {
  return {
    id: row.id,
    name: row.name,
    deviceType: row.device_type,
    backedUp: row.backed_up,
    transports: row.transports,
    createdAt: row.created_at.toISOString(),
    lastUsedAt: row.last_used_at?.toISOString() ?? null,
  };
}

export async function listPasskeys(tx: Tx, userId: string): Promise<PasskeySummary[]> {
  const rows = await tx
    .selectFrom("passkeys")
    .select(SUMMARY_COLUMNS)
    .where("user_id", "=", userId)
    .orderBy("created_at")
    .orderBy("id")
    .execute();
  return rows.map(summaryOf);
}

export async function findPasskey(tx: Tx, userId: string, passkeyId: string): Promise<PasskeySummary | undefined> {
  const row = await tx
    .selectFrom("passkeys")
    .select(SUMMARY_COLUMNS)
    .where("user_id", "=", userId)
    .where("id", "=", passkeyId)
    .executeTakeFirst();
  return row && summaryOf(row);
}

/** Renames one of the user's passkeys; undefined when the user has no such passkey. */
export async function renamePasskey(
  tx: Tx,
  input: { userId: string; passkeyId: string; name: string },
): Promise<PasskeySummary | undefined> {
  const row = await tx
    .updateTable("passkeys")
    .set({ name: input.name })
    .where("user_id", "=", input.userId)
    .where("id", "=", input.passkeyId)
    .returning(SUMMARY_COLUMNS)
    .executeTakeFirst();
  return row && summaryOf(row);
}

/** Removes one of the user's passkeys; false when the user has no such passkey. */
export async function removePasskey(tx: Tx, input: { userId: string; passkeyId: string }): Promise<boolean> {
  const result = await tx
    .deleteFrom("passkeys")
    .where("user_id", "=", input.userId)
    .where("id", "=", input.passkeyId)
    .executeTakeFirst();
  return Number(result.numDeletedRows) > 0;
}

/**
 * Records a refused ceremony (auth.passkey-failed) on the actor's platform chain, in a transaction of its own
 * (the request is refused and rolls back): its purpose and reason, never the response.
 */
export async function recordPasskeyFailure(
  deps: Pick<IdentityDeps, "db"> & AlertDeps,
  input: {
    purpose: WebauthnChallengePurpose;
    failure: PasskeyFailure;
    /** The signed-in user who asked; undefined for a sign-in or a reset (anonymous until it succeeds). */
    userId?: string;
    sessionId?: string;
    /** The account an anonymous ceremony was for, when known (a password reset's). */
    subjectId?: string;
    requestId: string;
    /** The attempt's backoff counters (a second factor's, from throttleSecondFactor): the failure counts against each. */
    backoff?: readonly BackoffTarget[];
  },
): Promise<void> {
  const { userId, sessionId, failure, backoff } = input;
  // A sign-in refused after the credential was found concerns its owner, who may want to know.
  const subject = userId ?? input.subjectId ?? failure.ownerId;
  const actor: Actor = userId === undefined ? { kind: "anonymous", id: null } : { kind: "user", id: userId };
  await deps.db.withPlatform(async (tx) => {
    if (backoff) await recordFailure(tx, deps, backoff, { requestId: input.requestId, actor, userId: subject });
    // A passkey sign-in refused once its credential was found is a failed sign-in to the credential's owner,
    // counted towards their burst alert like a wrong password (A6).
    if (input.purpose === "sign-in" && userId === undefined && failure.ownerId !== null) {
      await countFailedSignIn(deps, tx, failure.ownerId, input.requestId);
    }
    await deps.audit.record(tx, {
      tenantId: null,
      stream: "security",
      actor,
      action: "auth.passkey-failed",
      target: sessionId ? { type: "session", id: sessionId } : { type: "user", id: subject },
      subjects: subject === null ? [] : [subject],
      details: { purpose: input.purpose, reason: failure.reason },
      requestId: input.requestId,
    });
  });
}
