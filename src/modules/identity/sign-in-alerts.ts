import { sql } from "kysely";
import type { Tx } from "../../platform/db/index.ts";
import { type AlertDeps, raiseAlert } from "./alerts.ts";
import { type RememberedDevice, rememberDevice } from "./devices.ts";
import type { FactorMethod } from "./schema.ts";

/**
 * The alerts sign-ins raise (promise A6): a burst of failed sign-ins to an account, a success after several
 * failures, and a sign-in from a browser the account has not used before. Failures are counted per existing
 * account in sign_in_failures; an attempt at an address with no account counts nowhere (there is no one to
 * tell, and its rate limits hold it back anyway).
 */

/** A burst: this many failures within one window… */
export const BURST_FAILURES = 5;
/** …of this length (the window starts with its first failure; one burst alert per window). */
export const BURST_WINDOW_MS = 15 * 60_000;
/** A success after at least this many failures since the previous success raises an alert. */
export const FAILURES_BEFORE_SUCCESS = 3;
/** Failures older than this are forgotten, with or without a success. */
const FORGET_AFTER_MS = 24 * 3_600_000;

/**
 * Counts a failed sign-in to `userId`, in the transaction that records the failure, and raises the burst alert
 * when this failure makes the window's count reach BURST_FAILURES and the window has none yet (the conditional
 * update lets exactly one of several racing failures raise it).
 */
export async function countFailedSignIn(deps: AlertDeps, tx: Tx, userId: string, requestId: string): Promise<void> {
  const now = deps.clock.now();
  const windowStart = new Date(now.getTime() - BURST_WINDOW_MS);
  const forgotten = new Date(now.getTime() - FORGET_AFTER_MS);
  await sql`
    DELETE FROM sign_in_failures WHERE user_id IN (
      SELECT user_id FROM sign_in_failures WHERE last_failure_at < ${forgotten} ORDER BY last_failure_at LIMIT 100)`.execute(
    tx,
  );
  const { rows } = await sql<{ in_window: number; window_started_at: Date }>`
    INSERT INTO sign_in_failures AS f (user_id, since_success, window_started_at, in_window, last_failure_at)
    VALUES (${userId}, 1, ${now}, 1, ${now})
    ON CONFLICT (user_id) DO UPDATE SET
      since_success = CASE WHEN f.last_failure_at >= ${forgotten} THEN f.since_success + 1 ELSE 1 END,
      in_window = CASE WHEN f.window_started_at > ${windowStart} THEN f.in_window + 1 ELSE 1 END,
      window_started_at = CASE WHEN f.window_started_at > ${windowStart} THEN f.window_started_at ELSE ${now} END,
      last_failure_at = ${now}
    RETURNING f.in_window, f.window_started_at`.execute(tx);
  const counted = rows[0];
  if (!counted || Number(counted.in_window) < BURST_FAILURES) return;
  const claimed = await tx
    .updateTable("sign_in_failures")
    .set({ burst_alerted_at: now })
    .where("user_id", "=", userId)
    .where((eb) =>
      eb.or([eb("burst_alerted_at", "is", null), eb("burst_alerted_at", "<", new Date(counted.window_started_at))]),
    )
    .executeTakeFirst();
  if (Number(claimed.numUpdatedRows) === 0) return;
  await raiseAlert(deps, tx, {
    kind: "failed-sign-in-burst",
    userId,
    details: { failures: Number(counted.in_window), windowMinutes: BURST_WINDOW_MS / 60_000 },
    requestId,
  });
}

/**
 * After the account's first factor succeeded (a password that was right, even if a second factor is still
 * due), in the sign-in's transaction: the failure count starts again, and a success after several failures
 * raises its alert.
 */
export async function countSuccessfulSignIn(deps: AlertDeps, tx: Tx, userId: string, requestId: string): Promise<void> {
  const forgotten = new Date(deps.clock.now().getTime() - FORGET_AFTER_MS);
  const cleared = await tx
    .deleteFrom("sign_in_failures")
    .where("user_id", "=", userId)
    .returning(["since_success", "last_failure_at"])
    .executeTakeFirst();
  if (!cleared || cleared.since_success < FAILURES_BEFORE_SUCCESS || cleared.last_failure_at < forgotten) return;
  await raiseAlert(deps, tx, {
    kind: "sign-in-after-failures",
    userId,
    details: { failures: cleared.since_success },
    requestId,
  });
}

/**
 * What every complete sign-in does besides opening its session (password, passkey, second factor, SSO), in its
 * transaction: the browser becomes a known device of the account, and a browser the account had not used
 * before raises the new-device alert, except on the account's very first sign-in. Set the returned token as
 * the device cookie (devices.ts setDeviceCookie) once the transaction committed. `presented`: the device token
 * the browser sent (devices.ts presentedDeviceToken); `method`: how the user signed in.
 */
export async function rememberSignInDevice(
  deps: AlertDeps,
  tx: Tx,
  presented: string | undefined,
  signIn: { userId: string; method: FactorMethod; requestId: string },
): Promise<RememberedDevice> {
  const device = await rememberDevice(tx, signIn.userId, presented, deps.clock.now());
  if (device.isNew && !device.firstForAccount) {
    await raiseAlert(deps, tx, {
      kind: "new-device",
      userId: signIn.userId,
      details: { method: signIn.method, device: device.id },
      requestId: signIn.requestId,
    });
  }
  return device;
}
