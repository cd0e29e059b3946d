import { describe, expect, it } from "vitest";
import { DATABASE_KINDS } from "../../../test/support/databases.ts";
import { manualClock } from "../../platform/clock.ts";
import { uuidv7 } from "../../platform/ids.ts";
import type { OutboxEntry } from "../../platform/mail/index.ts";
import { completePasswordReset } from "./accounts.ts";
import {
  applyDueFactorResets,
  cancelFactorReset,
  FACTOR_RESET_DELAY,
  FactorResetError,
  requestFactorReset,
} from "./factor-resets.ts";
import { sessionHeaders, signIn, useIdentityTestApp } from "./testing.ts";

const TOKEN = /#token=([A-Za-z0-9_-]{43})$/m;
const NEW_PASSWORD = "marmalade tugboat sonnet 4451 ahead";
const HOUR = 3_600_000;

describe.each(DATABASE_KINDS)("factor resets on %s", (kind) => {
  const clock = manualClock("2026-04-01T08:00:00.000Z");
  const world = useIdentityTestApp(kind, clock);

  const newAddress = () => `lost.${uuidv7().slice(-12)}@example.test`;

  const mailTo = async (address: string, template: string): Promise<OutboxEntry[]> =>
    (await world.deps.mailer.outbox({ limit: 10_000 })).filter((e) => e.to === address && e.template === template);

  const resets = (userId: string) =>
    world.t.db.withPlatform((tx) => tx.selectFrom("factor_resets").selectAll().where("user_id", "=", userId).execute());

  const events = (userId: string, action: string) =>
    world.t.db.withPlatform((tx) =>
      tx
        .selectFrom("platform_audit_events")
        .selectAll()
        .where("target_id", "=", userId)
        .where("action", "=", action)
        .execute(),
    );

  const me = (cookie: string) =>
    world.app.app.inject({ method: "GET", url: "/api/v1/me", headers: sessionHeaders(cookie) });

  const cancelRoute = (cookie: string) =>
    world.app.app.inject({ method: "DELETE", url: "/api/v1/me/factor-reset", headers: sessionHeaders(cookie) });

  it("is mailed at once, waits 72 hours, then clears the password, ends every session and mails a reset link", async () => {
    const user = await world.newUser();
    const requestedAt = clock.now();

    const dueAt = await requestFactorReset(world.deps, user.email, "cli-request");
    expect(dueAt.getTime() - requestedAt.getTime()).toBe(FACTOR_RESET_DELAY);
    expect(FACTOR_RESET_DELAY).toBe(72 * HOUR);
    const [row] = await resets(user.id);
    expect(row).toMatchObject({ requested_at: requestedAt, due_at: dueAt, cancelled_at: null, completed_at: null });
    const [notice] = await mailTo(user.email, "factor-reset-requested");
    expect(notice?.rendered?.text).toContain("takes effect at 2026-04-04 08:00 UTC");
    expect(notice?.rendered?.text).toContain("https://charter.test/account");
    const [requested] = await events(user.id, "auth.factor-reset-requested");
    expect(requested).toMatchObject({
      stream: "security",
      actor_kind: "system",
      actor_id: null,
      request_id: "cli-request",
      details: { via: "cli", dueAt: dueAt.toISOString() },
    });

    // Not before it is due: nothing changes; the password still signs in (the first session has timed out
    // by now, so a fresh one shows that sessions end when the reset applies).
    clock.set(new Date(dueAt.getTime() - 1));
    expect(await applyDueFactorResets(world.deps)).toBe(0);
    const session = await signIn(world.app, user.email, user.password);
    expect((await me(session.cookie)).statusCode).toBe(200);
    expect(await mailTo(user.email, "factors-reset")).toEqual([]);

    clock.set(dueAt);
    expect(await applyDueFactorResets(world.deps)).toBe(1);
    expect(await applyDueFactorResets(world.deps)).toBe(0);
    expect((await resets(user.id))[0]?.completed_at).toEqual(dueAt);
    const stored = await world.t.db.withPlatform((tx) =>
      tx.selectFrom("users").select("password_hash").where("id", "=", user.id).executeTakeFirstOrThrow(),
    );
    expect(stored.password_hash).toBeNull();
    expect((await me(session.cookie)).statusCode).toBe(401);
    await expect(signIn(world.app, user.email, user.password)).rejects.toThrow(/401/);
    const [applied] = await events(user.id, "auth.factors-reset");
    expect(applied).toMatchObject({ actor_kind: "system", details: { factors: ["password"], sessionsRevoked: 1 } });

    const [resetMail] = await mailTo(user.email, "factors-reset");
    const token = TOKEN.exec(resetMail?.rendered?.text ?? "")?.[1];
    expect(token).toBeDefined();
    await completePasswordReset(
      world.deps,
      { token: token ?? "", password: NEW_PASSWORD },
      { requestId: "web", address: "10.0.0.1" },
    );
    await signIn(world.app, user.email, NEW_PASSWORD);
  });

  it("is stopped when the signed-in user cancels it, and a second cancel finds none", async () => {
    const user = await world.newUser();
    const session = await signIn(world.app, user.email, user.password);
    const dueAt = await requestFactorReset(world.deps, user.email);

    const cancelled = await cancelRoute(session.cookie);
    expect(cancelled.statusCode).toBe(204);
    expect((await cancelRoute(session.cookie)).statusCode).toBe(404);
    expect((await resets(user.id))[0]?.cancelled_at).not.toBeNull();
    expect(await events(user.id, "auth.factor-reset-cancelled")).toMatchObject([
      { actor_kind: "user", actor_id: user.id },
    ]);
    expect(await mailTo(user.email, "factor-reset-requested")).toHaveLength(1);

    clock.set(new Date(dueAt.getTime() + HOUR));
    const later = await signIn(world.app, user.email, user.password);
    expect(await applyDueFactorResets(world.deps)).toBe(0);
    expect((await me(later.cookie)).statusCode).toBe(200);
    await signIn(world.app, user.email, user.password);
    // Once cancelled, a new request may be made.
    await requestFactorReset(world.deps, user.email);
    expect(await resets(user.id)).toHaveLength(2);
  });

  it("refuses a second request while one is pending", async () => {
    const user = await world.newUser();
    await requestFactorReset(world.deps, user.email);
    await expect(requestFactorReset(world.deps, user.email)).rejects.toThrow(FactorResetError);
    await expect(requestFactorReset(world.deps, user.email)).rejects.toThrow(/already pending/);
    expect(await resets(user.id)).toHaveLength(1);
    expect(await mailTo(user.email, "factor-reset-requested")).toHaveLength(1);
    expect(await events(user.id, "auth.factor-reset-requested")).toHaveLength(1);
    expect(await cancelFactorReset(world.deps, user.id)).toBe(true);
  });

  it("refuses an unknown or unverified address and writes nothing", async () => {
    const unverified = await world.newUser({ verified: false });
    const unknown = newAddress();
    const count = () =>
      world.t.db.withPlatform(async (tx) => ({
        resets: (await tx.selectFrom("factor_resets").select("id").execute()).length,
        events: (await tx.selectFrom("platform_audit_events").select("id").execute()).length,
        mail: (await tx.selectFrom("platform_mail_messages").select("id").execute()).length,
      }));
    const before = await count();
    for (const address of [unverified.email, unknown]) {
      await expect(requestFactorReset(world.deps, address)).rejects.toThrow("no verified account has this address");
    }
    expect(await count()).toEqual(before);
  });
});
