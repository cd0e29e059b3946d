import { sql } from "kysely";
import { beforeEach, describe, expect, it, vi } from "vitest";
import { DATABASE_KINDS } from "../../../test/support/databases.ts";
import { manualClock } from "../../platform/clock.ts";
import { uuidv7 } from "../../platform/ids.ts";
import type { OutboxEntry } from "../../platform/mail/index.ts";
import { UNIFORM_ANSWER_MS } from "./account-routes.ts";
import { TOKEN_LIFETIME_MS } from "./accounts.ts";
import { createTestUser, sessionHeaders, signIn, useIdentityTestApp } from "./testing.ts";
import { emailIndexOf } from "./users.ts";

const STRONG = "violet umbrella galloping 917 quietly";
const STRONGER = "marmalade tugboat sonnet 4451 ahead";
const TOKEN = /#token=([A-Za-z0-9_-]{43})$/m;

describe.each(DATABASE_KINDS)("accounts on %s", (kind) => {
  const clock = manualClock("2026-04-01T08:00:00.000Z");
  const world = useIdentityTestApp(kind, clock);

  // Every test starts in a fresh rate-limit window (the limits count per hour and per source address).
  beforeEach(() => clock.advance(24 * 3_600_000));

  const newAddress = (label = "user") => `${label}.${uuidv7().slice(-12)}@example.test`;

  const post = (url: string, payload?: object, headers: Record<string, string> = {}) =>
    world.app.app.inject({ method: "POST", url, payload, headers });

  async function mailTo(address: string): Promise<OutboxEntry[]> {
    return (await world.deps.mailer.outbox({ limit: 10_000 })).filter((entry) => entry.to === address);
  }

  /** The newest message of `template` to `address`, and the token in its link (when it has one). */
  async function lastMail(address: string, template: string): Promise<{ entry: OutboxEntry; token?: string }> {
    const entry = (await mailTo(address)).find((e) => e.template === template);
    if (!entry) throw new Error(`no ${template} mail to the address`);
    const token = TOKEN.exec(entry.rendered?.text ?? "")?.[1];
    return { entry, ...(token ? { token } : {}) };
  }

  async function tokenFrom(address: string, template: string): Promise<string> {
    const { token } = await lastMail(address, template);
    if (!token) throw new Error(`the ${template} mail holds no token`);
    return token;
  }

  const usersAt = (address: string) =>
    world.t.db.withPlatform((tx) =>
      tx
        .selectFrom("users")
        .selectAll()
        .where("email_index", "=", emailIndexOf(world.deps.keyRing, address).index)
        .orderBy("created_at")
        .execute(),
    );

  const userById = (id: string) =>
    world.t.db.withPlatform((tx) => tx.selectFrom("users").selectAll().where("id", "=", id).executeTakeFirstOrThrow());

  const events = (targetId: string) =>
    world.t.db.withPlatform((tx) =>
      tx
        .selectFrom("platform_audit_events")
        .selectAll()
        .where("target_id", "=", targetId)
        .orderBy("at")
        .orderBy("seq")
        .execute(),
    );

  /** Every stored audit event, as text, to search for what must never be in it. */
  const auditText = () =>
    world.t.db.withPlatform(async (tx) => {
      const { rows } = await sql<{ row: string }>`SELECT to_jsonb(e)::text AS row FROM platform_audit_events e`.execute(
        tx,
      );
      return rows.map((r) => r.row).join("\n");
    });

  async function signUpAndVerify(address: string, password = STRONG, displayName = "Ada Lovelace") {
    expect((await post("/api/v1/accounts", { email: address, displayName, password })).statusCode).toBe(202);
    const token = await tokenFrom(address, "verify-email");
    expect((await post("/api/v1/accounts/verify-email", { token })).statusCode).toBe(204);
    const [user] = await usersAt(address);
    if (!user) throw new Error("no account was created");
    return user;
  }

  const me = (cookie: string) =>
    world.app.app.inject({ method: "GET", url: "/api/v1/me", headers: sessionHeaders(cookie) });

  describe("sign-up and verification", () => {
    it("creates an unverified account, mails a link with the token in its fragment, and verifies it once", async () => {
      const address = newAddress();
      const response = await post("/api/v1/accounts", { email: address, displayName: "Ada", password: STRONG });
      expect(response.statusCode).toBe(202);
      expect(response.json()).toEqual({ status: "accepted" });
      const [user, ...others] = await usersAt(address);
      expect(others).toEqual([]);
      expect(user?.email_verified_at).toBeNull();
      expect(user?.password_hash).toMatch(/^\$argon2id\$/);
      expect(user?.email).not.toContain(address);

      const { entry, token } = await lastMail(address, "verify-email");
      expect(entry.purpose).toBe("security");
      expect(entry.rendered?.text).toContain(`https://charter.test/verify-email#token=${token}`);
      expect(entry.rendered?.text).toContain("Hello Ada,");

      expect((await post("/api/v1/accounts/verify-email", { token })).statusCode).toBe(204);
      expect((await userById(user?.id ?? "")).email_verified_at).toEqual(clock.now());
      // Single use.
      const again = await post("/api/v1/accounts/verify-email", { token });
      expect(again.statusCode).toBe(400);
      expect(again.headers["content-type"]).toContain("application/problem+json");

      const actions = (await events(user?.id ?? "")).map((e) => [e.action, e.stream, e.actor_kind, e.actor_id]);
      expect(actions).toEqual([
        ["auth.signed-up", "security", "user", user?.id],
        ["auth.email-verified", "security", "user", user?.id],
      ]);
    });

    it("answers sign-up and reset requests no sooner than their floor, for held and unknown addresses alike", async () => {
      const taken = newAddress("floor");
      await createTestUser(world.deps, { email: taken, displayName: "Holder" });
      const timed = async (url: string, body: Record<string, string>) => {
        const started = performance.now();
        const response = await post(url, body);
        return { status: response.statusCode, ms: performance.now() - started };
      };
      for (const email of [taken, newAddress("floor-unknown")]) {
        const signUp = await timed("/api/v1/accounts", { email, displayName: "Eve", password: STRONG });
        expect(signUp.status).toBe(202);
        expect(signUp.ms).toBeGreaterThanOrEqual(UNIFORM_ANSWER_MS.signUp - 1);
        const reset = await timed("/api/v1/accounts/password-reset", { email });
        expect(reset.status).toBe(202);
        expect(reset.ms).toBeGreaterThanOrEqual(UNIFORM_ANSWER_MS.passwordReset - 1);
      }
    });

    it("answers the same for an address a verified account holds, creates nothing and writes to that account", async () => {
      const taken = newAddress("taken");
      const holder = await createTestUser(world.deps, { email: taken, displayName: "Holder" });
      const fresh = newAddress("fresh");
      const hash = vi.spyOn(world.deps.passwords, "hash");
      try {
        const existing = await post("/api/v1/accounts", { email: taken, displayName: "Eve", password: STRONG });
        const unknown = await post("/api/v1/accounts", { email: fresh, displayName: "Eve", password: STRONG });
        expect(existing.statusCode).toBe(unknown.statusCode);
        expect(existing.body).toBe(unknown.body);
        expect(existing.headers["content-type"]).toBe(unknown.headers["content-type"]);
        // The same work: the password is hashed in both cases.
        expect(hash).toHaveBeenCalledTimes(2);
      } finally {
        hash.mockRestore();
      }
      expect((await usersAt(taken)).map((u) => u.id)).toEqual([holder.id]);
      const [notice, ...more] = await mailTo(taken);
      expect(more).toEqual([]);
      expect(notice?.template).toBe("signup-existing-account");
      expect(notice?.rendered?.text).toContain("Hello Holder,");
      expect(notice?.rendered?.text).not.toContain("#token=");
      expect((await events(holder.id)).map((e) => e.action)).toEqual([]);
      expect(await usersAt(fresh)).toHaveLength(1);
    });

    it("wipes every other unverified account of the address when one of them is verified", async () => {
      const address = newAddress();
      expect(
        (await post("/api/v1/accounts", { email: address, displayName: "Eve", password: STRONG })).statusCode,
      ).toBe(202);
      const intruderToken = await tokenFrom(address, "verify-email");
      expect(
        (await post("/api/v1/accounts", { email: address, displayName: "Owner", password: STRONGER })).statusCode,
      ).toBe(202);
      const [intruder, owner] = await usersAt(address);
      expect(owner?.display_name).toBe("Owner");
      const personKeys = (personId: string) =>
        world.t.db.withPlatform((tx) =>
          tx
            .selectFrom("person_keys")
            .select((eb) => [eb("wrapped_key", "is", null).as("destroyed")])
            .where("person_id", "=", personId)
            .execute(),
        );
      // The sign-up sealed its address under a key of the person's own.
      expect(await personKeys(intruder?.id ?? "")).toEqual([{ destroyed: false }]);
      const ownerToken = await tokenFrom(address, "verify-email");
      expect(ownerToken).not.toBe(intruderToken);

      expect((await post("/api/v1/accounts/verify-email", { token: ownerToken })).statusCode).toBe(204);
      const left = await usersAt(address);
      expect(left.map((u) => [u.id, u.email_verified_at !== null])).toEqual([[owner?.id, true]]);
      // The wiped account's token went with it.
      expect((await post("/api/v1/accounts/verify-email", { token: intruderToken })).statusCode).toBe(400);
      const tokens = await world.t.db.withPlatform((tx) =>
        tx
          .selectFrom("account_tokens")
          .select("id")
          .where("user_id", "=", intruder?.id ?? "")
          .execute(),
      );
      expect(tokens).toEqual([]);
      // And its key is destroyed (journalled), the person refused new ones; the owner's is untouched.
      expect(await personKeys(intruder?.id ?? "")).toEqual([]);
      expect(
        await world.t.db.withPlatform((tx) =>
          world.deps.keyRing.isErased(tx, { scope: "person", personId: intruder?.id ?? "" }),
        ),
      ).toBe(true);
      expect(await personKeys(owner?.id ?? "")).toEqual([{ destroyed: false }]);
      const verified = (await events(owner?.id ?? "")).find((e) => e.action === "auth.email-verified");
      expect(verified?.details).toEqual({ wipedAccounts: 1 });
    });

    it("refuses a verification when a verified account took the address meanwhile, changing nothing", async () => {
      const address = newAddress();
      await post("/api/v1/accounts", { email: address, displayName: "Late", password: STRONG });
      const token = await tokenFrom(address, "verify-email");
      const holder = await createTestUser(world.deps, { email: address });
      const refused = await post("/api/v1/accounts/verify-email", { token });
      expect(refused.statusCode).toBe(400);
      expect(refused.json().detail).toMatch(/another verified account/);
      const rows = await usersAt(address);
      expect(rows.map((u) => [u.id === holder.id, u.email_verified_at !== null])).toEqual([
        [false, false],
        [true, true],
      ]);
      const [token_] = await world.t.db.withPlatform((tx) =>
        tx
          .selectFrom("account_tokens")
          .select("used_at")
          .where("user_id", "=", rows[0]?.id ?? "")
          .execute(),
      );
      expect(token_?.used_at).toBeNull();
    });

    it("refuses a verification link after 24 hours, and tokens of the wrong shape or purpose", async () => {
      const address = newAddress();
      await post("/api/v1/accounts", { email: address, displayName: "Slow", password: STRONG });
      const token = await tokenFrom(address, "verify-email");
      for (const bad of ["", "x", `${token}x`, token.replace(/.$/, token.endsWith("A") ? "B" : "A")]) {
        expect((await post("/api/v1/accounts/verify-email", { token: bad })).statusCode).toBe(400);
      }
      // A verification token does not reset a password.
      expect((await post("/api/v1/accounts/password-reset/complete", { token, password: STRONGER })).statusCode).toBe(
        400,
      );
      clock.advance(TOKEN_LIFETIME_MS["verify-email"]);
      expect((await post("/api/v1/accounts/verify-email", { token })).statusCode).toBe(400);
      expect((await usersAt(address))[0]?.email_verified_at).toBeNull();
    });

    it("refuses a weak password or bad input with a problem, writing and mailing nothing", async () => {
      const address = newAddress("ada.lovelace");
      const weak = await post("/api/v1/accounts", {
        email: address,
        displayName: "Ada Lovelace",
        password: "lovelace1234",
      });
      expect(weak.statusCode).toBe(400);
      expect(weak.json()).toMatchObject({ type: "/problems/weak-password" });
      const short = await post("/api/v1/accounts", { email: address, displayName: "Ada", password: "short" });
      expect(short.json().detail).toMatch(/at least 12 characters/);
      for (const payload of [
        { email: "not-an-address", displayName: "Ada", password: STRONG },
        { email: address, displayName: "   ", password: STRONG },
        { email: address, displayName: "Ada\nClick here", password: STRONG },
        { email: address, displayName: "Ada" },
      ]) {
        const response = await post("/api/v1/accounts", payload);
        expect(response.statusCode).toBe(400);
        expect(response.headers["content-type"]).toContain("application/problem+json");
      }
      expect(await usersAt(address)).toEqual([]);
      expect(await mailTo(address)).toEqual([]);
    });

    it("sends a signed-in unverified account a new link that replaces the old one", async () => {
      const address = newAddress();
      await post("/api/v1/accounts", { email: address, displayName: "Ada", password: STRONG });
      const first = await tokenFrom(address, "verify-email");
      const session = await signIn(world.app, address, STRONG);
      const resent = await post("/api/v1/accounts/verification-email", undefined, sessionHeaders(session.cookie));
      expect(resent.statusCode).toBe(202);
      const second = await tokenFrom(address, "verify-email");
      expect(second).not.toBe(first);
      expect((await post("/api/v1/accounts/verify-email", { token: first })).statusCode).toBe(400);
      expect((await post("/api/v1/accounts/verify-email", { token: second })).statusCode).toBe(204);
      const already = await post("/api/v1/accounts/verification-email", undefined, sessionHeaders(session.cookie));
      expect(already.statusCode).toBe(409);
      expect((await post("/api/v1/accounts/verification-email")).statusCode).toBe(401);
    });
  });

  describe("password reset", () => {
    it("answers the same for an unknown address, and mails a 30-minute link to an existing account", async () => {
      const user = await world.newUser({ displayName: "Grace" });
      const unknownAddress = newAddress("nobody");
      const existing = await post("/api/v1/accounts/password-reset", { email: user.email });
      const unknown = await post("/api/v1/accounts/password-reset", { email: unknownAddress });
      expect(existing.statusCode).toBe(202);
      expect(existing.statusCode).toBe(unknown.statusCode);
      expect(existing.body).toBe(unknown.body);
      expect(await mailTo(unknownAddress)).toEqual([]);
      const { entry, token } = await lastMail(user.email, "password-reset");
      expect(entry.rendered?.text).toContain(`https://charter.test/reset-password#token=${token}`);
      const requested = (await events(user.id)).find((e) => e.action === "auth.password-reset-requested");
      expect(requested).toMatchObject({ stream: "security", actor_kind: "anonymous", actor_id: null });
    });

    it("throttles per address alike whether or not an account holds it", async () => {
      const user = await world.newUser();
      const unknownAddress = newAddress("nobody");
      const statuses = async (email: string) => {
        const codes: number[] = [];
        for (let i = 0; i < 6; i++) {
          codes.push((await post("/api/v1/accounts/password-reset", { email })).statusCode);
        }
        return codes;
      };
      const expected = [202, 202, 202, 202, 202, 429];
      expect(await statuses(user.email)).toEqual(expected);
      expect(await statuses(unknownAddress)).toEqual(expected);
      const limited = await post("/api/v1/accounts/password-reset", { email: unknownAddress });
      expect(Number(limited.headers["retry-after"])).toBeGreaterThan(0);
    });

    it("sets the new password once, ends every session, mails a notice; earlier links stop working", async () => {
      const user = await world.newUser({ displayName: "Grace" });
      const one = await signIn(world.app, user.email, user.password);
      const two = await signIn(world.app, user.email, user.password);
      await post("/api/v1/accounts/password-reset", { email: user.email });
      const earlier = await tokenFrom(user.email, "password-reset");
      await post("/api/v1/accounts/password-reset", { email: user.email });
      const token = await tokenFrom(user.email, "password-reset");
      expect(token).not.toBe(earlier);
      expect(
        (await post("/api/v1/accounts/password-reset/complete", { token: earlier, password: STRONG })).statusCode,
      ).toBe(400);

      const weak = await post("/api/v1/accounts/password-reset/complete", { token, password: "grace grace 1" });
      expect(weak.statusCode).toBe(400);
      expect(weak.json().type).toBe("/problems/weak-password");
      expect((await me(one.cookie)).statusCode).toBe(200);

      expect((await post("/api/v1/accounts/password-reset/complete", { token, password: STRONG })).statusCode).toBe(
        204,
      );
      expect((await me(one.cookie)).statusCode).toBe(401);
      expect((await me(two.cookie)).statusCode).toBe(401);
      const sessions = await world.t.db.withPlatform((tx) =>
        tx.selectFrom("sessions").select("revoke_reason").where("user_id", "=", user.id).execute(),
      );
      expect(sessions.map((s) => s.revoke_reason)).toEqual(["password-reset", "password-reset"]);
      expect((await post("/api/v1/accounts/password-reset/complete", { token, password: STRONGER })).statusCode).toBe(
        400,
      );
      await expect(signIn(world.app, user.email, user.password)).rejects.toThrow(/401/);
      await signIn(world.app, user.email, STRONG);
      const { entry } = await lastMail(user.email, "password-reset-done");
      expect(entry.rendered?.text).not.toMatch(TOKEN);
      const reset = (await events(user.id)).find((e) => e.action === "auth.password-reset");
      expect(reset).toMatchObject({ actor_kind: "user", actor_id: user.id, details: { sessionsRevoked: 2 } });
    });

    it("lets one of two simultaneous redemptions of a reset link through", async () => {
      const user = await world.newUser();
      await post("/api/v1/accounts/password-reset", { email: user.email });
      const token = await tokenFrom(user.email, "password-reset");
      const results = await Promise.all(
        [STRONG, STRONGER].map((password) => post("/api/v1/accounts/password-reset/complete", { token, password })),
      );
      expect(results.map((r) => r.statusCode).sort()).toEqual([204, 400]);
      const winner = results[0]?.statusCode === 204 ? STRONG : STRONGER;
      await signIn(world.app, user.email, winner);
    });

    it("refuses a reset link 30 minutes after it was sent", async () => {
      const user = await world.newUser();
      await post("/api/v1/accounts/password-reset", { email: user.email });
      const token = await tokenFrom(user.email, "password-reset");
      clock.advance(TOKEN_LIFETIME_MS["reset-password"]);
      expect(TOKEN_LIFETIME_MS["reset-password"]).toBe(30 * 60_000);
      expect((await post("/api/v1/accounts/password-reset/complete", { token, password: STRONG })).statusCode).toBe(
        400,
      );
      await signIn(world.app, user.email, user.password);
    });

    it("gives an unverified sign-up no reset link", async () => {
      const address = newAddress();
      await post("/api/v1/accounts", { email: address, displayName: "Ada", password: STRONG });
      expect((await post("/api/v1/accounts/password-reset", { email: address })).statusCode).toBe(202);
      expect((await mailTo(address)).map((e) => e.template)).toEqual(["verify-email"]);
    });
  });

  describe("own profile and password", () => {
    it("shows the own profile with the address in clear and changes the display name", async () => {
      const address = newAddress();
      const user = await signUpAndVerify(address);
      const { cookie } = await signIn(world.app, address, STRONG);
      const profile = await me(cookie);
      expect(profile.statusCode).toBe(200);
      expect(profile.json()).toEqual({
        id: user.id,
        email: address,
        emailVerified: true,
        displayName: "Ada Lovelace",
        avatar: null,
        passwordChangedAt: user.password_changed_at?.toISOString(),
      });
      const patched = await world.app.app.inject({
        method: "PATCH",
        url: "/api/v1/me",
        headers: sessionHeaders(cookie),
        payload: { displayName: "  Countess Ada  " },
      });
      expect(patched.statusCode).toBe(200);
      expect(patched.json().displayName).toBe("Countess Ada");
      const changed = (await events(user.id)).find((e) => e.action === "account.profile-changed");
      expect(changed).toMatchObject({ stream: "changes", actor_id: user.id, details: { fields: ["displayName"] } });
      expect((await world.app.app.inject({ method: "GET", url: "/api/v1/me" })).statusCode).toBe(401);
    });

    it("changes the password with the current one, keeps the caller's session and ends the others", async () => {
      const user = await world.newUser({ displayName: "Grace" });
      const mine = await signIn(world.app, user.email, user.password);
      const other = await signIn(world.app, user.email, user.password);
      const change = (payload: object) => post("/api/v1/me/password", payload, sessionHeaders(mine.cookie));

      const wrong = await change({ currentPassword: "not my password at all", newPassword: STRONG });
      expect(wrong.statusCode).toBe(403);
      const failed = (await events(user.id)).find((e) => e.action === "auth.password-change-failed");
      expect(failed).toMatchObject({ stream: "security", details: { reason: "wrong-current-password" } });

      const weak = await change({ currentPassword: user.password, newPassword: "grace1234567" });
      expect(weak.statusCode).toBe(400);
      expect(weak.json().type).toBe("/problems/weak-password");
      const before = await userById(user.id);

      expect((await change({ currentPassword: user.password, newPassword: STRONG })).statusCode).toBe(204);
      const after = await userById(user.id);
      expect(after.password_hash).not.toBe(before.password_hash);
      expect(after.password_changed_at).toEqual(clock.now());
      expect((await me(mine.cookie)).statusCode).toBe(200);
      expect((await me(other.cookie)).statusCode).toBe(401);
      await signIn(world.app, user.email, STRONG);
      await expect(signIn(world.app, user.email, user.password)).rejects.toThrow(/401/);
      expect((await lastMail(user.email, "password-changed")).entry.rendered?.text).toContain("Hello Grace,");
      const changed = (await events(user.id)).find((e) => e.action === "auth.password-changed");
      expect(changed).toMatchObject({ actor_id: user.id, details: { sessionsRevoked: 1 } });
    });
  });

  describe("email change", () => {
    it("applies only once the new address confirms, and the old address can revert it", async () => {
      const user = await createTestUser(world.deps, { email: newAddress("old"), displayName: "Grace" });
      const session = await signIn(world.app, user.email, user.password);
      await post("/api/v1/accounts/password-reset", { email: user.email });
      const resetToken = await tokenFrom(user.email, "password-reset");
      const newEmail = newAddress("new");

      const asked = await post("/api/v1/me/email", { newEmail }, sessionHeaders(session.cookie));
      expect(asked.statusCode).toBe(202);
      expect(asked.json()).toEqual({ status: "accepted" });
      expect((await me(session.cookie)).json().email).toBe(user.email);
      const { entry, token } = await lastMail(newEmail, "email-change-confirm");
      expect(entry.rendered?.text).toContain(`https://charter.test/confirm-email#token=${token}`);

      expect((await post("/api/v1/accounts/email-change/confirm", { token })).statusCode).toBe(204);
      expect((await me(session.cookie)).json()).toMatchObject({ email: newEmail, emailVerified: true });
      expect((await post("/api/v1/accounts/email-change/confirm", { token })).statusCode).toBe(400);
      // A reset link sent to the old address no longer works.
      expect(
        (await post("/api/v1/accounts/password-reset/complete", { token: resetToken, password: STRONG })).statusCode,
      ).toBe(400);
      await signIn(world.app, newEmail, user.password);
      await expect(signIn(world.app, user.email, user.password)).rejects.toThrow(/401/);

      const revertMail = await lastMail(user.email, "email-changed-revert");
      expect(revertMail.entry.rendered?.text).toMatch(/reset your password/);
      expect(revertMail.entry.rendered?.text).toContain(`https://charter.test/revert-email#token=${revertMail.token}`);
      expect((await post("/api/v1/accounts/email-change/revert", { token: revertMail.token })).statusCode).toBe(204);
      expect((await me(session.cookie)).statusCode).toBe(401);
      const back = await signIn(world.app, user.email, user.password);
      expect((await me(back.cookie)).json()).toMatchObject({ email: user.email, emailVerified: true });
      expect((await post("/api/v1/accounts/email-change/revert", { token: revertMail.token })).statusCode).toBe(400);

      expect((await events(user.id)).map((e) => e.action).filter((a) => a.startsWith("auth.email"))).toEqual([
        "auth.email-change-requested",
        "auth.email-changed",
        "auth.email-change-reverted",
      ]);
    });

    it("tells a verified holder of the new address instead, answering the caller the same", async () => {
      const user = await world.newUser();
      const holder = await createTestUser(world.deps, { email: newAddress("holder"), displayName: "Holder" });
      const session = await signIn(world.app, user.email, user.password);
      const free = newAddress("free");
      const toTaken = await post("/api/v1/me/email", { newEmail: holder.email }, sessionHeaders(session.cookie));
      const toFree = await post("/api/v1/me/email", { newEmail: free }, sessionHeaders(session.cookie));
      expect(toTaken.statusCode).toBe(toFree.statusCode);
      expect(toTaken.body).toBe(toFree.body);
      expect((await mailTo(holder.email)).map((e) => e.template)).toEqual(["email-change-existing-account"]);
      const tokens = await world.t.db.withPlatform((tx) =>
        tx
          .selectFrom("account_tokens")
          .select("email_index")
          .where("user_id", "=", user.id)
          .where("purpose", "=", "change-email")
          .execute(),
      );
      expect(
        tokens.map((r) => emailIndexOf(world.deps.keyRing, free).index.equals(r.email_index ?? Buffer.alloc(0))),
      ).toEqual([true]);
    });

    it("requires recent authentication", async () => {
      const user = await world.newUser();
      const session = await signIn(world.app, user.email, user.password);
      clock.advance(11 * 60_000);
      const refused = await post("/api/v1/me/email", { newEmail: newAddress() }, sessionHeaders(session.cookie));
      expect(refused.statusCode).toBe(403);
      expect(refused.json().type).toBe("/problems/reauthentication-required");
    });
  });

  it("puts no address, password or token in any audit event", async () => {
    const address = newAddress("secret.person");
    const user = await signUpAndVerify(address, STRONG);
    const verifyToken = await tokenFrom(address, "verify-email");
    const session = await signIn(world.app, address, STRONG);
    await post(
      "/api/v1/me/password",
      { currentPassword: "wrong password here", newPassword: STRONGER },
      sessionHeaders(session.cookie),
    );
    await post(
      "/api/v1/me/password",
      { currentPassword: STRONG, newPassword: STRONGER },
      sessionHeaders(session.cookie),
    );
    await post("/api/v1/accounts/password-reset", { email: address });
    const resetToken = await tokenFrom(address, "password-reset");
    const final = "quartz lantern meadow 8812 drifting";
    await post("/api/v1/accounts/password-reset/complete", { token: resetToken, password: final });
    const again = await signIn(world.app, address, final);
    const newEmail = newAddress("secret.new");
    await post("/api/v1/me/email", { newEmail }, sessionHeaders(again.cookie));
    const changeToken = await tokenFrom(newEmail, "email-change-confirm");
    await post("/api/v1/accounts/email-change/confirm", { token: changeToken });
    const revertToken = await tokenFrom(address, "email-changed-revert");
    await post("/api/v1/accounts/email-change/revert", { token: revertToken });

    const actions = (await events(user.id)).map((e) => e.action);
    expect(actions).toEqual(
      expect.arrayContaining([
        "auth.signed-up",
        "auth.email-verified",
        "auth.password-change-failed",
        "auth.password-changed",
        "auth.password-reset-requested",
        "auth.password-reset",
        "auth.email-change-requested",
        "auth.email-changed",
        "auth.email-change-reverted",
      ]),
    );
    const text = (await auditText()).toLowerCase();
    for (const secret of [
      address,
      newEmail,
      "secret.person",
      "secret.new",
      STRONG,
      STRONGER,
      final,
      "wrong password here",
      verifyToken,
      resetToken,
      changeToken,
      revertToken,
      "Ada Lovelace",
    ]) {
      expect(text).not.toContain(secret.toLowerCase());
    }
  });
});
