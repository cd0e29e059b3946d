import type { Selectable } from "kysely";
import type { Actor, NewEvent } from "../../platform/audit/index.ts";
import type { KeyRing } from "../../platform/crypto/key-ring.ts";
import type { Tx } from "../../platform/db/index.ts";
import { HttpProblem } from "../../platform/http/problem.ts";
import { uuidv7 } from "../../platform/ids.ts";
import type { RateKey, RateRule } from "../../platform/ratelimit/limiter.ts";
import {
  emailChangeConfirm,
  emailChangedRevert,
  emailChangeExistingAccount,
  passwordChanged,
  passwordReset,
  passwordResetDone,
  signupExistingAccount,
  verifyEmail as verifyEmailMail,
} from "./account-mail.ts";
import { ownAvatarUrl } from "./avatars.ts";
import {
  backupCodeUsed,
  type CodeAnswer,
  type CodeProof,
  checkCodeAnswer,
  recordCodeRefused,
  spendCodeProof,
  throttleSecondFactor,
} from "./code-factors.ts";
import type { IdentityDeps } from "./deps.ts";
import { pageLink } from "./links.ts";
import { type PasskeyAssertion, toAssertionJSON } from "./passkey-schemas.ts";
import {
  claimPasskeyUse,
  PasskeyFailure,
  type ProvenPasskey,
  recordPasskeyFailure,
  resetLinkBinding,
  verifyAssertion,
} from "./passkeys.ts";
import { assertStrongPassword } from "./passwords.ts";
import { ACCOUNT_TOKEN_PURPOSES, type AccountTokenPurpose, type AccountTokensTable } from "./schema.ts";
import { hasSecondFactor } from "./second-factors.ts";
import { revokeUserSessions } from "./sessions.ts";
import {
  type BackoffTarget,
  backoffTargets,
  checkBackoff,
  linkBackoffTargets,
  recordFailureAfterRollback,
} from "./throttle.ts";
import { hashToken, isTokenShaped, newToken } from "./tokens.ts";
import {
  createUser,
  emailIndexOf,
  emailRateKey,
  findUserById,
  findVerifiedUserByEmail,
  type IndexedEmail,
  lockEmail,
  openEmail,
  sealEmail,
  type UserRow,
  userEmail,
} from "./users.ts";

/**
 * Accounts (issue 5, item 1; promise A1): sign-up, email verification, password reset and change, email
 * change and its revert, the own profile. Every change, its mail (queued in the same transaction) and its
 * audit event commit together. Nothing here logs or audits a password, a token or an address.
 *
 * No enumeration: sign-up and the reset request answer the same whether or not the address has an account,
 * hash or throttle the same way, and write to the address through the queue in both cases when there is
 * someone to write to.
 */

/** How long each emailed token can be redeemed. */
export const TOKEN_LIFETIME_MS: Readonly<Record<AccountTokenPurpose, number>> = {
  "verify-email": 24 * 3_600_000,
  "reset-password": 30 * 60_000,
  "change-email": 24 * 3_600_000,
  "revert-email": 7 * 24 * 3_600_000,
};

/** The web app's page that redeems each token (it POSTs the token taken from the fragment). */
export const TOKEN_PAGES: Readonly<Record<AccountTokenPurpose, string>> = {
  "verify-email": "/verify-email",
  "reset-password": "/reset-password",
  "change-email": "/confirm-email",
  "revert-email": "/revert-email",
};

/**
 * Limits on what sends mail or guesses a password. Counted per source address and per account key; for an
 * address the account key is its blind index, which exists whether or not an account holds it.
 */
export const ACCOUNT_LIMITS = {
  signUpPerAddress: { name: "sign-up", limit: 20, windowSeconds: 3600 },
  signUpPerEmail: { name: "sign-up", limit: 5, windowSeconds: 3600 },
  resetPerAddress: { name: "password-reset", limit: 20, windowSeconds: 3600 },
  resetPerEmail: { name: "password-reset", limit: 5, windowSeconds: 3600 },
  verificationPerAccount: { name: "verification-email", limit: 5, windowSeconds: 3600 },
  passwordChangePerAccount: { name: "password-change", limit: 10, windowSeconds: 900 },
  emailChangePerAccount: { name: "email-change", limit: 5, windowSeconds: 3600 },
  emailChangePerEmail: { name: "email-change", limit: 5, windowSeconds: 3600 },
} as const satisfies Record<string, RateRule>;

/** Where a request came from: its id for the audit event, its source address for throttling. */
export interface RequestContext {
  requestId: string;
  address: string;
}

/** The signed-in caller of a route that acts on their own account. */
export interface Caller {
  userId: string;
  sessionId?: string;
}

type TokenRow = Selectable<AccountTokensTable>;

const invalidLink = () => new HttpProblem("bad-request", "this link is invalid, was already used or has expired");
const addressTaken = () =>
  new HttpProblem("bad-request", "this address now belongs to another verified account; the link cannot be used");

async function throttle(deps: IdentityDeps, key: RateKey, rule: RateRule): Promise<void> {
  const decision = await deps.rateLimiter.consume(key, rule, { exact: true });
  if (!decision.allowed) {
    throw new HttpProblem("rate-limited", "too many attempts; try again later", {
      headers: { "retry-after": String(decision.retryAfter) },
    });
  }
}

export const link = (deps: Pick<IdentityDeps, "config">, page: string, token?: string) =>
  pageLink(deps.config.publicUrl, page, token);

/** An auth event about a user on the actor's platform chain (security stream). */
function securityEvent(
  action: `auth.${string}`,
  actor: Actor,
  userId: string,
  context: RequestContext,
  details: NewEvent["details"] = {},
): NewEvent {
  return {
    tenantId: null,
    stream: "security",
    actor,
    action,
    target: { type: "user", id: userId },
    details,
    requestId: context.requestId,
  };
}

const userActor = (userId: string): Actor => ({ kind: "user", id: userId });
const ANONYMOUS: Actor = { kind: "anonymous", id: null };

/** Issues a token for `purpose` (only its hash is stored); `email` travels with change and revert tokens. */
async function issueToken(
  tx: Tx,
  deps: Pick<IdentityDeps, "keyRing">,
  userId: string,
  purpose: AccountTokenPurpose,
  now: Date,
  email?: IndexedEmail,
): Promise<string> {
  const token = newToken();
  const id = uuidv7(now.getTime());
  await tx
    .insertInto("account_tokens")
    .values({
      id,
      user_id: userId,
      purpose,
      token_hash: hashToken(token),
      email: email ? await sealEmail(tx, deps.keyRing, userId, "account_tokens", id, email.normalised) : null,
      email_index: email?.index ?? null,
      created_at: now,
      expires_at: new Date(now.getTime() + TOKEN_LIFETIME_MS[purpose]),
    })
    .execute();
  return token;
}

/** Makes the user's outstanding tokens of these purposes unusable (a newer one, or a change, supersedes them). */
export async function retireTokens(
  tx: Tx,
  userId: string,
  purposes: readonly AccountTokenPurpose[],
  now: Date,
): Promise<void> {
  await tx
    .updateTable("account_tokens")
    .set({ used_at: now })
    .where("user_id", "=", userId)
    .where("purpose", "in", purposes)
    .where("used_at", "is", null)
    .execute();
}

/**
 * The unused, unexpired token of `purpose` presented, locked for the rest of the transaction so that two
 * redemptions at once cannot both succeed; anything else is refused with one and the same answer.
 */
async function redeemable(
  tx: Tx,
  purpose: AccountTokenPurpose,
  token: string,
  now: Date,
  onInvalid?: () => void,
): Promise<TokenRow> {
  const refused = () => {
    onInvalid?.();
    return invalidLink();
  };
  if (!isTokenShaped(token)) throw refused();
  const row = await tx
    .selectFrom("account_tokens")
    .selectAll()
    .where("token_hash", "=", hashToken(token))
    .where("purpose", "=", purpose)
    .forUpdate()
    .executeTakeFirst();
  if (!row || row.used_at !== null || row.expires_at.getTime() <= now.getTime()) throw refused();
  return row;
}

async function existingUser(tx: Tx, userId: string): Promise<UserRow> {
  const user = await findUserById(tx, userId);
  if (!user) throw new HttpProblem("unauthenticated", "this account no longer exists");
  return user;
}

/**
 * Makes `userId` the verified owner of the address `index`: refused when another verified account holds
 * it (then nothing changes), otherwise every unverified sign-up for the address is wiped (their tokens and
 * sessions go with them), since the owner of the mailbox has now proven who they are, and each wiped
 * person's keys are destroyed (journalled, reason "retention": nothing they protected is kept). Returns how
 * many.
 */
async function claimAddress(tx: Tx, keyRing: KeyRing, userId: string, index: Buffer): Promise<number> {
  await lockEmail(tx, index);
  const holder = await findVerifiedUserByEmail(tx, index);
  if (holder && holder.id !== userId) throw addressTaken();
  const wiped = await tx
    .deleteFrom("users")
    .where("email_index", "=", index)
    .where("email_verified_at", "is", null)
    .where("id", "!=", userId)
    .returning("id")
    .execute();
  for (const { id } of wiped) await keyRing.erasePerson(tx, { personId: id, reason: "retention" });
  return wiped.length;
}

/**
 * Moves an account to an address its owner just proved (by a link sent there): verified from now on, and
 * every link sent before stops working, wherever it went. Returns how many unverified sign-ups were wiped.
 */
async function moveAccount(
  tx: Tx,
  deps: IdentityDeps,
  userId: string,
  email: IndexedEmail,
  now: Date,
): Promise<number> {
  const wiped = await claimAddress(tx, deps.keyRing, userId, email.index);
  await tx
    .updateTable("users")
    .set({
      email: await sealEmail(tx, deps.keyRing, userId, "users", userId, email.normalised),
      email_index: email.index,
      email_verified_at: now,
      updated_at: now,
    })
    .where("id", "=", userId)
    .execute();
  await retireTokens(tx, userId, ACCOUNT_TOKEN_PURPOSES, now);
  return wiped;
}

/**
 * The mail a user gets about their own account, at the address `to` (theirs, or their previous one);
 * `extra` is what a template needs beyond the name and the link.
 */
export function mailUser(
  tx: Tx,
  deps: Pick<IdentityDeps, "mailer">,
  user: Pick<UserRow, "id" | "display_name">,
  to: string,
  template: string,
  url: string,
  extra: Record<string, string> = {},
) {
  return deps.mailer.send(tx, {
    personId: user.id,
    purpose: "security",
    channel: "email",
    to,
    template,
    data: { displayName: user.display_name, link: url, ...extra },
  });
}

/**
 * Mails the user a reset link (valid 30 minutes, single use) with `template`; earlier reset links stop
 * working. Shared by the reset the user asks for and the factor reset the operator asked for.
 */
export async function mailResetLink(
  tx: Tx,
  deps: Pick<IdentityDeps, "keyRing" | "mailer" | "config">,
  user: Pick<UserRow, "id" | "display_name">,
  to: string,
  template: string,
  now: Date,
): Promise<void> {
  await retireTokens(tx, user.id, ["reset-password"], now);
  const token = await issueToken(tx, deps, user.id, "reset-password", now);
  await mailUser(tx, deps, user, to, template, link(deps, TOKEN_PAGES["reset-password"], token));
}

export interface SignUpInput {
  email: string;
  displayName: string;
  password: string;
}

/**
 * Creates an unverified account and mails it a verification link; when a verified account already holds
 * the address, creates nothing and tells that account instead. The caller cannot tell the two apart: the
 * password is hashed and a message queued in both cases.
 */
export async function signUp(deps: IdentityDeps, input: SignUpInput, context: RequestContext): Promise<void> {
  const email = emailIndexOf(deps.keyRing, input.email);
  await throttle(deps, { kind: "address", address: context.address }, ACCOUNT_LIMITS.signUpPerAddress);
  await throttle(deps, emailRateKey(email), ACCOUNT_LIMITS.signUpPerEmail);
  await assertStrongPassword(input.password, { email: email.normalised, displayName: input.displayName });
  const passwordHash = await deps.passwords.hash(input.password);
  await deps.db.withPlatform(async (tx) => {
    const now = deps.clock.now();
    const holder = await findVerifiedUserByEmail(tx, email.index);
    if (holder) {
      const to = await userEmail(tx, deps.keyRing, holder);
      await mailUser(tx, deps, holder, to, signupExistingAccount.name, link(deps, "/sign-in"));
      return;
    }
    const user = await createUser(tx, deps.keyRing, now, {
      email,
      displayName: input.displayName,
      passwordHash,
    });
    const token = await issueToken(tx, deps, user.id, "verify-email", now);
    await mailUser(
      tx,
      deps,
      user,
      email.normalised,
      verifyEmailMail.name,
      link(deps, TOKEN_PAGES["verify-email"], token),
    );
    await deps.audit.record(tx, securityEvent("auth.signed-up", userActor(user.id), user.id, context));
  });
}

/** Redeems a verification token: the account becomes the address's verified owner. */
export async function verifyEmail(deps: IdentityDeps, token: string, context: RequestContext): Promise<void> {
  const backoff = linkBackoffTargets("verification", context.address);
  await checkBackoff(deps, backoff);
  await deps.db.withPlatform(async (tx) => {
    const now = deps.clock.now();
    const row = await redeemable(tx, "verify-email", token, now, () =>
      recordFailureAfterRollback(deps, backoff, { requestId: context.requestId, actor: ANONYMOUS, userId: null }),
    );
    const user = await existingUser(tx, row.user_id);
    const wiped = await claimAddress(tx, deps.keyRing, user.id, user.email_index);
    await tx.updateTable("users").set({ email_verified_at: now, updated_at: now }).where("id", "=", user.id).execute();
    await retireTokens(tx, user.id, ["verify-email"], now);
    await deps.audit.record(
      tx,
      securityEvent("auth.email-verified", userActor(user.id), user.id, context, { wipedAccounts: wiped }),
    );
  });
}

/** Sends a signed-in, still unverified account a new verification link; earlier links stop working. */
export async function resendVerification(deps: IdentityDeps, caller: Caller): Promise<void> {
  await throttle(deps, { kind: "account", id: caller.userId }, ACCOUNT_LIMITS.verificationPerAccount);
  await deps.db.withPlatform(async (tx) => {
    const now = deps.clock.now();
    const user = await existingUser(tx, caller.userId);
    if (user.email_verified_at !== null) throw new HttpProblem("conflict", "this address is already verified");
    await retireTokens(tx, user.id, ["verify-email"], now);
    const token = await issueToken(tx, deps, user.id, "verify-email", now);
    const to = await userEmail(tx, deps.keyRing, user);
    await mailUser(tx, deps, user, to, verifyEmailMail.name, link(deps, TOKEN_PAGES["verify-email"], token));
  });
}

/**
 * Mails a reset link to the verified account holding the address, if any (earlier reset links stop
 * working). Throttled per source and per address alike whether or not an account holds it. Unverified
 * sign-ups get no link: their owner has proven nothing, and can simply sign up again.
 */
export async function requestPasswordReset(
  deps: IdentityDeps,
  address: string,
  context: RequestContext,
): Promise<void> {
  const email = emailIndexOf(deps.keyRing, address);
  await throttle(deps, { kind: "address", address: context.address }, ACCOUNT_LIMITS.resetPerAddress);
  await throttle(deps, emailRateKey(email), ACCOUNT_LIMITS.resetPerEmail);
  await deps.db.withPlatform(async (tx) => {
    const now = deps.clock.now();
    const user = await findVerifiedUserByEmail(tx, email.index);
    if (!user) return;
    await mailResetLink(tx, deps, user, await userEmail(tx, deps.keyRing, user), passwordReset.name, now);
    await deps.audit.record(tx, securityEvent("auth.password-reset-requested", ANONYMOUS, user.id, context));
  });
}

/**
 * What a password reset presents as the second factor: a typed code, or a passkey's assertion over the
 * challenge of POST /api/v1/accounts/password-reset/passkey-options, asked for with the same link.
 */
export type ResetSecondFactor = CodeAnswer | { passkey: PasskeyAssertion };
type ResetProof = CodeProof | { method: "passkey"; passkey: ProvenPasskey };

/** The account a live reset link is for, redeeming nothing (for the options of its passkey ceremony). */
export async function passwordResetAccount(deps: IdentityDeps, token: string): Promise<string> {
  return deps.db.withPlatform(async (tx) => (await redeemable(tx, "reset-password", token, deps.clock.now())).user_id);
}

/** A passkey's assertion for a reset: the challenge must be the one asked for with this very link. */
async function proveResetPasskey(
  deps: IdentityDeps,
  input: { userId: string; token: string; assertion: PasskeyAssertion; backoff: readonly BackoffTarget[] },
  context: RequestContext,
): Promise<ResetProof> {
  try {
    const passkey = await verifyAssertion(deps, {
      purpose: "password-reset",
      binding: resetLinkBinding(input.token),
      userId: input.userId,
      response: toAssertionJSON(input.assertion),
      now: deps.clock.now(),
    });
    return { method: "passkey", passkey };
  } catch (error) {
    if (!(error instanceof PasskeyFailure)) throw error;
    await recordPasskeyFailure(deps, {
      purpose: "password-reset",
      failure: error,
      subjectId: input.userId,
      requestId: context.requestId,
      backoff: input.backoff,
    });
    throw new HttpProblem("second-factor-required", "the passkey was not accepted; ask for its options again");
  }
}

/** Spends a proven second factor in the reset's transaction; false when a concurrent request spent it first. */
function spendResetProof(tx: Tx, userId: string, proof: ResetProof, now: Date): Promise<boolean> {
  return proof.method === "passkey" ? claimPasskeyUse(tx, proof.passkey, now) : spendCodeProof(tx, userId, proof, now);
}

/**
 * Proves the second factor of an account that has one, for a password reset: a reset link proves control of
 * the mailbox only, which must not be enough to take over an account protected by more (A2). Nothing is
 * spent yet: the caller spends the proof in the transaction that resets the password. Refused with
 * "second-factor-required" (401) when the answer is missing or wrong; a wrong one is throttled and audited.
 */
async function proveResetSecondFactor(
  deps: IdentityDeps,
  input: { userId: string; token: string; answer: ResetSecondFactor | undefined },
  context: RequestContext,
): Promise<ResetProof> {
  const { userId, answer } = input;
  if (answer === undefined) {
    throw new HttpProblem("second-factor-required", "this account has a second factor: prove it to reset the password");
  }
  const backoff = await throttleSecondFactor(deps, { userId, address: context.address });
  if ("passkey" in answer) {
    return proveResetPasskey(deps, { userId, token: input.token, assertion: answer.passkey, backoff }, context);
  }
  const check = await checkCodeAnswer(deps, userId, answer, deps.clock.now());
  if (check.ok) return check.proof;
  await recordCodeRefused(deps, {
    actor: ANONYMOUS,
    userId,
    method: check.method,
    purpose: "password-reset",
    reason: check.reason,
    requestId: context.requestId,
    backoff,
  });
  throw new HttpProblem("second-factor-required", "the second factor is not right");
}

/**
 * Sets a new password from a reset token and ends every session of the account at once, with no grace.
 * The token is checked, and the password's strength against the account's details, before the (slow) hash
 * is computed outside any transaction; the token is then redeemed under lock, so it works once. An account
 * with a second factor must prove it too (`secondFactor`); until it does, nothing changes and the token
 * stays usable.
 */
export async function completePasswordReset(
  deps: IdentityDeps,
  input: { token: string; password: string; secondFactor?: ResetSecondFactor | undefined },
  context: RequestContext,
): Promise<void> {
  const backoff = linkBackoffTargets("password-reset", context.address);
  await checkBackoff(deps, backoff);
  const { tokenId, userId, email, displayName, secondFactorDue } = await deps.db.withPlatform(async (tx) => {
    const row = await redeemable(tx, "reset-password", input.token, deps.clock.now(), () =>
      recordFailureAfterRollback(deps, backoff, { requestId: context.requestId, actor: ANONYMOUS, userId: null }),
    );
    const user = await existingUser(tx, row.user_id);
    return {
      tokenId: row.id,
      userId: user.id,
      email: await userEmail(tx, deps.keyRing, user),
      displayName: user.display_name,
      secondFactorDue: await hasSecondFactor(tx, user.id),
    };
  });
  await assertStrongPassword(input.password, { email, displayName });
  const proof = secondFactorDue
    ? await proveResetSecondFactor(deps, { userId, token: input.token, answer: input.secondFactor }, context)
    : undefined;
  const passwordHash = await deps.passwords.hash(input.password);
  const spent = await deps.db.withPlatform(async (tx) => {
    const now = deps.clock.now();
    const row = await redeemable(tx, "reset-password", input.token, now);
    if (row.id !== tokenId) throw invalidLink();
    const user = await existingUser(tx, row.user_id);
    // A code (or a passkey's counter) that a concurrent request spent first: nothing is written, the token
    // stays usable.
    if (proof && !(await spendResetProof(tx, user.id, proof, now))) return false;
    await tx
      .updateTable("users")
      .set({ password_hash: passwordHash, password_changed_at: now, updated_at: now })
      .where("id", "=", user.id)
      .execute();
    await retireTokens(tx, user.id, ["reset-password"], now);
    const revoked = await revokeUserSessions(tx, user.id, "password-reset", now);
    await mailUser(tx, deps, user, email, passwordResetDone.name, link(deps, TOKEN_PAGES["reset-password"]));
    await deps.audit.record(
      tx,
      securityEvent("auth.password-reset", userActor(user.id), user.id, context, {
        sessionsRevoked: revoked,
        ...(proof ? { secondFactor: proof.method } : {}),
      }),
    );
    if (proof?.method === "backup-code") await backupCodeUsed(deps, tx, user.id, context.requestId);
    return true;
  });
  if (!spent && proof) {
    if (proof.method === "passkey") {
      await recordPasskeyFailure(deps, {
        purpose: "password-reset",
        failure: new PasskeyFailure("counter-regression", userId),
        subjectId: userId,
        requestId: context.requestId,
      });
      throw new HttpProblem("second-factor-required", "the passkey was not accepted; ask for its options again");
    }
    await recordCodeRefused(deps, {
      actor: ANONYMOUS,
      userId,
      method: proof.method,
      purpose: "password-reset",
      reason: "replayed",
      requestId: context.requestId,
      backoff: backoffTargets("second-factor", context.address, { key: userId }),
    });
    throw new HttpProblem("second-factor-required", "this code was already used");
  }
}

export interface Profile {
  id: string;
  email: string;
  emailVerified: boolean;
  displayName: string;
  /** The URL of the own picture (GET /api/v1/me/avatar), or null when there is none. */
  avatar: string | null;
  passwordChangedAt: string | null;
}

export async function getProfile(deps: IdentityDeps, caller: Caller): Promise<Profile> {
  return deps.db.withPlatform(async (tx) => {
    const user = await existingUser(tx, caller.userId);
    return {
      id: user.id,
      email: await userEmail(tx, deps.keyRing, user),
      emailVerified: user.email_verified_at !== null,
      displayName: user.display_name,
      avatar: ownAvatarUrl(user.avatar_file_id),
      passwordChangedAt: user.password_changed_at?.toISOString() ?? null,
    };
  });
}

/** Changes the own display name (the one profile field members of a shared tenant see, with the avatar). */
export async function updateProfile(
  deps: IdentityDeps,
  caller: Caller,
  input: { displayName: string },
  context: RequestContext,
): Promise<Profile> {
  await deps.db.withPlatform(async (tx) => {
    const now = deps.clock.now();
    const user = await existingUser(tx, caller.userId);
    if (user.display_name === input.displayName) return;
    await tx
      .updateTable("users")
      .set({ display_name: input.displayName, updated_at: now })
      .where("id", "=", user.id)
      .execute();
    await deps.audit.record(tx, {
      tenantId: null,
      stream: "changes",
      actor: userActor(user.id),
      action: "account.profile-changed",
      target: { type: "user", id: user.id },
      details: { fields: ["displayName"] },
      requestId: context.requestId,
    });
  });
  return getProfile(deps, caller);
}

/**
 * Changes the password of a signed-in user who knows the current one; every other session ends (the
 * caller's stays). A wrong current password is recorded on the user's platform chain, in a transaction of
 * its own, and refused; the attempts are throttled per account so a stolen session cannot guess it.
 */
export async function changePassword(
  deps: IdentityDeps,
  caller: Caller,
  input: { currentPassword: string; newPassword: string },
  context: RequestContext,
): Promise<void> {
  await throttle(deps, { kind: "account", id: caller.userId }, ACCOUNT_LIMITS.passwordChangePerAccount);
  const { user, email } = await deps.db.withPlatform(async (tx) => {
    const found = await existingUser(tx, caller.userId);
    return { user: found, email: await userEmail(tx, deps.keyRing, found) };
  });
  const right =
    user.password_hash === null
      ? await deps.passwords.verifyNothing(input.currentPassword).then(() => false)
      : await deps.passwords.verify(user.password_hash, input.currentPassword);
  if (!right) {
    await deps.db.withPlatform((tx) =>
      deps.audit.record(
        tx,
        securityEvent("auth.password-change-failed", userActor(user.id), user.id, context, {
          reason: "wrong-current-password",
        }),
      ),
    );
    throw new HttpProblem("forbidden", "the current password is not right");
  }
  await assertStrongPassword(input.newPassword, { email, displayName: user.display_name });
  const passwordHash = await deps.passwords.hash(input.newPassword);
  await deps.db.withPlatform(async (tx) => {
    const now = deps.clock.now();
    // Only over the password just verified: a reset or change that committed meanwhile wins.
    const changed = await tx
      .updateTable("users")
      .set({ password_hash: passwordHash, password_changed_at: now, updated_at: now })
      .where("id", "=", user.id)
      .where("password_hash", user.password_hash === null ? "is" : "=", user.password_hash)
      .executeTakeFirst();
    if (Number(changed.numUpdatedRows) !== 1) {
      throw new HttpProblem("conflict", "the password was changed meanwhile; sign in again");
    }
    await retireTokens(tx, user.id, ["reset-password"], now);
    const revoked = await revokeUserSessions(
      tx,
      user.id,
      "password-changed",
      now,
      caller.sessionId ? { except: caller.sessionId } : {},
    );
    await mailUser(tx, deps, user, email, passwordChanged.name, link(deps, TOKEN_PAGES["reset-password"]));
    await deps.audit.record(
      tx,
      securityEvent("auth.password-changed", userActor(user.id), user.id, context, { sessionsRevoked: revoked }),
    );
  });
}

/**
 * Asks to move the account to a new address: a confirmation link goes to the new address and nothing
 * changes until it is redeemed. When a verified account already holds the new address, that address is
 * told so instead; the caller gets the same answer either way, so the route reveals no one's account.
 */
export async function requestEmailChange(
  deps: IdentityDeps,
  caller: Caller,
  input: { newEmail: string },
  context: RequestContext,
): Promise<void> {
  const email = emailIndexOf(deps.keyRing, input.newEmail);
  await throttle(deps, { kind: "account", id: caller.userId }, ACCOUNT_LIMITS.emailChangePerAccount);
  await throttle(deps, emailRateKey(email), ACCOUNT_LIMITS.emailChangePerEmail);
  await deps.db.withPlatform(async (tx) => {
    const now = deps.clock.now();
    const user = await existingUser(tx, caller.userId);
    if (email.index.equals(user.email_index)) throw new HttpProblem("bad-request", "this is already your address");
    const holder = await findVerifiedUserByEmail(tx, email.index);
    if (holder) {
      await mailUser(tx, deps, holder, email.normalised, emailChangeExistingAccount.name, link(deps, "/sign-in"));
    } else {
      await retireTokens(tx, user.id, ["change-email"], now);
      const token = await issueToken(tx, deps, user.id, "change-email", now, email);
      await mailUser(
        tx,
        deps,
        user,
        email.normalised,
        emailChangeConfirm.name,
        link(deps, TOKEN_PAGES["change-email"], token),
      );
    }
    await deps.audit.record(tx, securityEvent("auth.email-change-requested", userActor(user.id), user.id, context));
  });
}

/**
 * Redeems a confirmation from the new address: the account moves to it (verified, since its owner just
 * proved it), the old address gets a link to revert the change for 7 days, and reset links sent to the old
 * address stop working.
 */
export async function confirmEmailChange(deps: IdentityDeps, token: string, context: RequestContext): Promise<void> {
  await deps.db.withPlatform(async (tx) => {
    const now = deps.clock.now();
    const row = await redeemable(tx, "change-email", token, now);
    const user = await existingUser(tx, row.user_id);
    const { email: sealedNew, email_index: newIndex } = row;
    if (sealedNew === null || newIndex === null) throw invalidLink();
    const newEmail = await openEmail(tx, deps.keyRing, "account_tokens", row.id, sealedNew);
    const oldEmail: IndexedEmail = {
      normalised: await userEmail(tx, deps.keyRing, user),
      index: Buffer.from(user.email_index),
    };
    const wiped = await moveAccount(tx, deps, user.id, { normalised: newEmail, index: Buffer.from(newIndex) }, now);
    const revert = await issueToken(tx, deps, user.id, "revert-email", now, oldEmail);
    await mailUser(
      tx,
      deps,
      user,
      oldEmail.normalised,
      emailChangedRevert.name,
      link(deps, TOKEN_PAGES["revert-email"], revert),
    );
    await deps.audit.record(
      tx,
      securityEvent("auth.email-changed", userActor(user.id), user.id, context, { wipedAccounts: wiped }),
    );
  });
}

/**
 * Redeems a revert link from the previous address: the account returns to it, every session ends and every
 * other outstanding link stops working. The password is left as is; the mail tells the user to reset it.
 */
export async function revertEmailChange(deps: IdentityDeps, token: string, context: RequestContext): Promise<void> {
  await deps.db.withPlatform(async (tx) => {
    const now = deps.clock.now();
    const row = await redeemable(tx, "revert-email", token, now);
    const user = await existingUser(tx, row.user_id);
    const { email: sealedOld, email_index: oldIndex } = row;
    if (sealedOld === null || oldIndex === null) throw invalidLink();
    const oldEmail = await openEmail(tx, deps.keyRing, "account_tokens", row.id, sealedOld);
    const wiped = await moveAccount(tx, deps, user.id, { normalised: oldEmail, index: Buffer.from(oldIndex) }, now);
    const revoked = await revokeUserSessions(tx, user.id, "email-change-reverted", now);
    await deps.audit.record(
      tx,
      securityEvent("auth.email-change-reverted", userActor(user.id), user.id, context, {
        sessionsRevoked: revoked,
        wipedAccounts: wiped,
      }),
    );
  });
}
