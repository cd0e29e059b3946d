import { generateSecret, generateURI, verify } from "otplib";
import QRCode from "qrcode";
import type { Binding } from "../../platform/crypto/envelope.ts";
import type { KeyRing } from "../../platform/crypto/key-ring.ts";
import type { Tx } from "../../platform/db/index.ts";

/**
 * The user's authenticator app (promise A2): RFC 6238 TOTP as every authenticator app speaks it (SHA-1, six
 * digits, 30-second steps), a code accepted one step either side of the server's time (clock drift and the
 * time it takes to type). The shared secret is sealed under the user's person key; a code is accepted only
 * for a time step later than the last one accepted, through a conditional update, so that a code (seen over
 * a shoulder, or sent twice at once) works once.
 */

export const TOTP_PERIOD_SECONDS = 30;
export const TOTP_DIGITS = 6;
/** Steps accepted either side of the current one. */
export const TOTP_WINDOW_STEPS = 1;
/** 160 bits, RFC 4226's recommendation (and what authenticator apps expect). */
const SECRET_BYTES = 20;
/** An enrolment not confirmed with a first code within this long must be started again. */
export const TOTP_ENROLMENT_LIFETIME_MS = 15 * 60_000;

/** What a TOTP code looks like; anything else is refused before any cryptography. */
export const TOTP_CODE = /^\d{6}$/;

const secretBinding = (userId: string): Binding => ({
  tenantId: null,
  table: "totp_factors",
  column: "secret",
  rowId: userId,
});

/** The time step a moment falls in (RFC 6238's T). */
export function timeStepOf(now: Date): number {
  return Math.floor(now.getTime() / 1000 / TOTP_PERIOD_SECONDS);
}

/**
 * The time step `code` is valid for at `now` (within the window), considering only steps after `afterStep`
 * (the last one accepted: earlier steps are replays); null when it is none of them.
 */
export async function matchTotpCode(
  secret: string,
  code: string,
  now: Date,
  afterStep: number | null,
): Promise<number | null> {
  if (!TOTP_CODE.test(code)) return null;
  // otplib refuses (throws on) a lower bound beyond the window; no code can be accepted then anyway.
  if (afterStep !== null && afterStep >= timeStepOf(now) + TOTP_WINDOW_STEPS) return null;
  const result = await verify({
    secret,
    token: code,
    epoch: Math.floor(now.getTime() / 1000),
    period: TOTP_PERIOD_SECONDS,
    digits: TOTP_DIGITS,
    algorithm: "sha1",
    epochTolerance: TOTP_WINDOW_STEPS * TOTP_PERIOD_SECONDS,
    ...(afterStep === null ? {} : { afterTimeStep: afterStep }),
  });
  // The union's HOTP member has no time step; a TOTP verification always reports one.
  return result.valid && "timeStep" in result ? result.timeStep : null;
}

/** The otpauth:// URI an authenticator app reads from the QR code (Key Uri Format). */
export function totpUri(publicUrl: URL, accountLabel: string, secret: string): string {
  return generateURI({
    // The host tells two Charter deployments apart in the user's app.
    issuer: `Charter (${publicUrl.host})`,
    label: accountLabel,
    secret,
    algorithm: "sha1",
    digits: TOTP_DIGITS,
    period: TOTP_PERIOD_SECONDS,
  });
}

/** The URI as a QR code, an SVG image in a data: URL (an <img> shows it; no script can run in it there). */
export async function totpQrCode(uri: string): Promise<string> {
  const svg = await QRCode.toString(uri, { type: "svg", errorCorrectionLevel: "M", margin: 2 });
  return `data:image/svg+xml;base64,${Buffer.from(svg).toString("base64")}`;
}

export interface TotpFactor {
  /** The base32 secret, in clear. */
  secret: string;
  createdAt: Date;
  confirmedAt: Date | null;
  lastUsedStep: number | null;
}

/** The user's authenticator app, confirmed or still awaiting its first code, with its secret opened. */
export async function findTotpFactor(tx: Tx, keyRing: KeyRing, userId: string): Promise<TotpFactor | undefined> {
  const row = await tx.selectFrom("totp_factors").selectAll().where("user_id", "=", userId).executeTakeFirst();
  if (!row) return undefined;
  return {
    secret: await keyRing.decrypt(tx, row.secret, secretBinding(userId)),
    createdAt: row.created_at,
    confirmedAt: row.confirmed_at,
    lastUsedStep: row.last_used_step === null ? null : Number(row.last_used_step),
  };
}

/**
 * Starts (or starts again) an enrolment with a new secret, sealed under the person key, replacing an
 * unconfirmed one. Returns the secret, or undefined when the user has a confirmed authenticator (which only
 * removing it replaces).
 */
export async function beginTotpEnrolment(
  tx: Tx,
  keyRing: KeyRing,
  userId: string,
  now: Date,
): Promise<string | undefined> {
  await tx.deleteFrom("totp_factors").where("user_id", "=", userId).where("confirmed_at", "is", null).execute();
  const secret = generateSecret({ length: SECRET_BYTES });
  const sealed = await keyRing.encrypt(tx, { scope: "person", personId: userId }, secret, secretBinding(userId));
  const inserted = await tx
    .insertInto("totp_factors")
    .values({ user_id: userId, secret: sealed, created_at: now, confirmed_at: null, last_used_step: null })
    .onConflict((conflict) => conflict.column("user_id").doNothing())
    .returning("user_id")
    .executeTakeFirst();
  return inserted ? secret : undefined;
}

/**
 * Accepts a code of `step` for the user's authenticator, if no code of that step or a later one was accepted
 * before: the one write that decides, so of two requests racing with the same code exactly one gets true.
 * The authenticator must be confirmed; with `enrolment` (when the enrolment being confirmed began), the code
 * confirms that enrolment instead, which must still await it (not replaced by a newer one meanwhile).
 */
export async function claimTotpStep(
  tx: Tx,
  userId: string,
  step: number,
  now: Date,
  options: { enrolment?: Date } = {},
): Promise<boolean> {
  let query = tx
    .updateTable("totp_factors")
    .set(options.enrolment ? { last_used_step: step, confirmed_at: now } : { last_used_step: step })
    .where("user_id", "=", userId)
    .where((eb) => eb.or([eb("last_used_step", "is", null), eb("last_used_step", "<", String(step))]));
  query = options.enrolment
    ? query.where("confirmed_at", "is", null).where("created_at", "=", options.enrolment)
    : query.where("confirmed_at", "is not", null);
  const result = await query.executeTakeFirst();
  return Number(result.numUpdatedRows) === 1;
}

/** Removes the user's authenticator (confirmed or not): what it was, or undefined when there was none. */
export async function deleteTotpFactor(tx: Tx, userId: string): Promise<{ confirmed: boolean } | undefined> {
  const removed = await tx
    .deleteFrom("totp_factors")
    .where("user_id", "=", userId)
    .returning("confirmed_at")
    .executeTakeFirst();
  return removed && { confirmed: removed.confirmed_at !== null };
}
