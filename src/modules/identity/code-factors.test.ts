import { beforeEach, describe, expect, it } from "vitest";
import { DATABASE_KINDS } from "../../../test/support/databases.ts";
import { oathtoolCode } from "../../../test/support/oathtool.ts";
import { manualClock } from "../../platform/clock.ts";
import { uuidv7 } from "../../platform/ids.ts";
import { BACKUP_CODE_COUNT, newBackupCodes, remainingBackupCodes, storeBackupCodes } from "./backup-codes.ts";
import { applyDueFactorResets, requestFactorReset } from "./factor-resets.ts";
import { randomAddress, type TestUser, useIdentityTestApp } from "./testing.ts";
import { beginTotpEnrolment, claimTotpStep, findTotpFactor, timeStepOf } from "./totp.ts";

const TOKEN = /#token=([A-Za-z0-9_-]{43})$/m;
const NEW_PASSWORD = "marmalade tugboat sonnet 4451 ahead";
const STEP_MS = 30_000;

/**
 * A second factor a user types, where no session is involved: a password reset of an account with an
 * authenticator app (a reset link proves the mailbox only), and the operator's factor reset, which removes
 * the second factors so that the reset link alone lets the owner back in.
 */
describe.each(DATABASE_KINDS)("typed second factors outside a session on %s", (kind) => {
  const clock = manualClock("2026-04-01T09:00:00.000Z");
  const world = useIdentityTestApp(kind, clock);

  // Fresh rate-limit windows (reset requests count per hour) and time steps for every test.
  beforeEach(() => clock.advance(24 * 3_600_000));

  const now = () => clock.now();
  const code = (secret: string, offsetMs = 0) => oathtoolCode(secret, new Date(now().getTime() + offsetMs));

  /** A user whose authenticator app is confirmed (its first code used now), with backup codes. */
  async function withApp(): Promise<{ user: TestUser; secret: string; backupCodes: string[] }> {
    const user = await world.newUser();
    const backup = await newBackupCodes(world.deps.passwords);
    const secret = await world.t.db.withPlatform(async (tx) => {
      const begun = (await beginTotpEnrolment(tx, world.deps.keyRing, user.id, now())) as string;
      const factor = await findTotpFactor(tx, world.deps.keyRing, user.id);
      await claimTotpStep(tx, user.id, timeStepOf(now()), now(), { enrolment: factor?.createdAt as Date });
      await storeBackupCodes(tx, user.id, backup.hashed, now());
      return begun;
    });
    clock.advance(STEP_MS);
    return { user, secret, backupCodes: backup.codes };
  }

  async function resetToken(address: string): Promise<string> {
    const asked = await world.app.app.inject({
      method: "POST",
      url: "/api/v1/accounts/password-reset",
      remoteAddress: randomAddress(),
      payload: { email: address },
    });
    expect(asked.statusCode).toBe(202);
    const mail = (await world.deps.mailer.outbox({ limit: 10_000 })).find(
      (entry) => entry.to === address && entry.template === "password-reset",
    );
    const token = TOKEN.exec(mail?.rendered?.text ?? "")?.[1];
    if (!token) throw new Error("no reset link was mailed");
    return token;
  }

  const complete = (payload: object) =>
    world.app.app.inject({
      method: "POST",
      url: "/api/v1/accounts/password-reset/complete",
      remoteAddress: randomAddress(),
      payload,
    });
  const passwordHash = async (userId: string) =>
    (
      await world.t.db.withPlatform((tx) =>
        tx.selectFrom("users").select("password_hash").where("id", "=", userId).executeTakeFirstOrThrow(),
      )
    ).password_hash;
  const events = (userId: string, action: string) =>
    world.t.db.withPlatform((tx) =>
      tx
        .selectFrom("platform_audit_events")
        .selectAll()
        .where("target_id", "=", userId)
        .where("action", "=", action)
        .orderBy("at")
        .orderBy("seq")
        .execute(),
    );

  describe("password reset", () => {
    it("needs a code from the app: without one, or with a wrong one, nothing changes and the link still works", async () => {
      const { user, secret } = await withApp();
      const token = await resetToken(user.email);
      const before = await passwordHash(user.id);

      const missing = await complete({ token, password: NEW_PASSWORD });
      expect(missing.statusCode).toBe(401);
      expect(missing.json().type).toMatch(/second-factor-required$/);
      const wrong = await complete({
        token,
        password: NEW_PASSWORD,
        secondFactor: { totpCode: await code(secret, 3 * STEP_MS) },
      });
      expect(wrong.statusCode).toBe(401);
      expect(await passwordHash(user.id)).toBe(before);
      expect(await events(user.id, "auth.password-reset")).toEqual([]);
      expect(await events(user.id, "auth.second-factor-failed")).toMatchObject([
        {
          actor_kind: "anonymous",
          details: { method: "totp", purpose: "password-reset", reason: "wrong-code" },
        },
      ]);

      const right = await code(secret);
      expect((await complete({ token, password: NEW_PASSWORD, secondFactor: { totpCode: right } })).statusCode).toBe(
        204,
      );
      expect(await passwordHash(user.id)).not.toBe(before);
      expect(await events(user.id, "auth.password-reset")).toMatchObject([
        { actor_kind: "user", actor_id: user.id, details: { secondFactor: "totp" } },
      ]);
      // The link is spent now, and the code too: another link with the same code is refused.
      expect((await complete({ token, password: NEW_PASSWORD, secondFactor: { totpCode: right } })).statusCode).toBe(
        400,
      );
      const again = await resetToken(user.email);
      const replay = await complete({ token: again, password: NEW_PASSWORD, secondFactor: { totpCode: right } });
      expect(replay.statusCode).toBe(401);
      expect((await events(user.id, "auth.second-factor-failed")).at(-1)).toMatchObject({
        details: { reason: "replayed" },
      });
    });

    it("takes a backup code instead, once", async () => {
      const { user, backupCodes } = await withApp();
      const [backup = ""] = backupCodes;
      const token = await resetToken(user.email);
      expect((await complete({ token, password: NEW_PASSWORD, secondFactor: { backupCode: backup } })).statusCode).toBe(
        204,
      );
      expect(await events(user.id, "auth.backup-code-used")).toMatchObject([
        { details: { remaining: BACKUP_CODE_COUNT - 1 } },
      ]);
      expect(await events(user.id, "auth.password-reset")).toMatchObject([
        { details: { secondFactor: "backup-code" } },
      ]);
      const again = await resetToken(user.email);
      expect(
        (await complete({ token: again, password: NEW_PASSWORD, secondFactor: { backupCode: backup } })).statusCode,
      ).toBe(401);
    });

    it("checks the link before asking for the factor, so a guessed link learns nothing", async () => {
      const { secret } = await withApp();
      const answer = await complete({
        token: "A".repeat(43),
        password: NEW_PASSWORD,
        secondFactor: { totpCode: await code(secret) },
      });
      expect(answer.statusCode).toBe(400);
    });

    it("asks nothing more of an account without a second factor", async () => {
      const user = await world.newUser();
      const token = await resetToken(user.email);
      expect((await complete({ token, password: NEW_PASSWORD })).statusCode).toBe(204);
    });
  });

  describe("factor reset", () => {
    it("removes the app, its backup codes and the passkeys when it falls due; the link alone lets the owner in", async () => {
      const { user } = await withApp();
      await world.t.db.withPlatform((tx) =>
        tx
          .insertInto("passkeys")
          .values({
            id: uuidv7(),
            user_id: user.id,
            credential_id: Buffer.alloc(32, 7),
            public_key: Buffer.alloc(77, 1),
            sign_count: 0,
            device_type: "multiDevice",
            backed_up: true,
            name: "Laptop",
            created_at: now(),
          })
          .execute(),
      );
      const dueAt = await requestFactorReset(world.deps, user.email);
      clock.set(new Date(dueAt.getTime() - 1));
      expect(await applyDueFactorResets(world.deps)).toBe(0);
      expect(await world.t.db.withPlatform((tx) => remainingBackupCodes(tx, user.id))).toBe(BACKUP_CODE_COUNT);

      clock.set(dueAt);
      expect(await applyDueFactorResets(world.deps)).toBe(1);
      const left = await world.t.db.withPlatform(async (tx) => ({
        totp: await tx.selectFrom("totp_factors").select("user_id").where("user_id", "=", user.id).execute(),
        codes: await tx.selectFrom("backup_codes").select("id").where("user_id", "=", user.id).execute(),
        passkeys: await tx.selectFrom("passkeys").select("id").where("user_id", "=", user.id).execute(),
      }));
      expect(left).toEqual({ totp: [], codes: [], passkeys: [] });
      expect(await events(user.id, "auth.factors-reset")).toMatchObject([
        { actor_kind: "system", details: { factors: ["password", "totp", "backup-codes", "passkeys"] } },
      ]);

      const mail = (await world.deps.mailer.outbox({ limit: 10_000 })).find(
        (entry) => entry.to === user.email && entry.template === "factors-reset",
      );
      const token = TOKEN.exec(mail?.rendered?.text ?? "")?.[1] ?? "";
      expect((await complete({ token, password: NEW_PASSWORD })).statusCode).toBe(204);
      const signedIn = await world.app.app.inject({
        method: "POST",
        url: "/api/v1/sessions",
        remoteAddress: randomAddress(),
        headers: { "sec-fetch-site": "same-origin" },
        payload: { email: user.email, password: NEW_PASSWORD },
      });
      expect(signedIn.json().session.state).toBe("active");
    });
  });
});
