import { generateKeyPairSync } from "node:crypto";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";
import { encodeCbor, SoftwareAuthenticator } from "../../../test/support/webauthn-authenticator.ts";
import { manualClock } from "../../platform/clock.ts";
import type { IdentityDeps } from "./deps.ts";
import {
  type AssertionPurpose,
  assertionOptions,
  CHALLENGE_LIFETIME_MS,
  type ChallengeBinding,
  PasskeyFailure,
  type PasskeyFailureReason,
  recordPasskeyUse,
  registrationOptions,
  savePasskey,
  verifyAssertion,
  verifyRegistration,
} from "./passkeys.ts";
import { hasSecondFactor } from "./second-factors.ts";
import { createSession } from "./sessions.ts";
import { createIdentityTestDeps, createTestUser } from "./testing.ts";
import { hashToken, newToken } from "./tokens.ts";

let counter = 0;
const email = () => `passkeys-${Date.now()}-${++counter}@example.com`;

/** The reason a ceremony was refused with, or "accepted". */
async function outcome(work: Promise<unknown>): Promise<PasskeyFailureReason | "accepted"> {
  try {
    await work;
    return "accepted";
  } catch (error) {
    if (error instanceof PasskeyFailure) return error.reason;
    throw error;
  }
}

describe("the software authenticator's CBOR", () => {
  it("encodes with the shortest heads (RFC 8949), as the verifier re-encodes COSE keys", () => {
    expect(encodeCbor(0).toString("hex")).toBe("00");
    expect(encodeCbor(23).toString("hex")).toBe("17");
    expect(encodeCbor(24).toString("hex")).toBe("1818");
    expect(encodeCbor(256).toString("hex")).toBe("190100");
    expect(encodeCbor(-1).toString("hex")).toBe("20");
    expect(encodeCbor(-7).toString("hex")).toBe("26");
    expect(encodeCbor(-257).toString("hex")).toBe("390100");
    expect(encodeCbor("fmt").toString("hex")).toBe("63666d74");
    expect(encodeCbor(Buffer.from([1, 2])).toString("hex")).toBe("420102");
    expect(encodeCbor(new Map([[1, 2]])).toString("hex")).toBe("a10102");
    expect(encodeCbor([1, "a"]).toString("hex")).toBe("82016161");
  });
});

describe.each(DATABASE_KINDS)("passkeys on %s", (kind) => {
  let t: TestDatabase;
  let deps: IdentityDeps;
  const clock = manualClock("2026-05-02T09:00:00.000Z");

  beforeAll(async () => {
    t = await openTestDatabase(kind);
    deps = createIdentityTestDeps(t.db, clock);
  });
  afterAll(async () => {
    await deps?.rateLimiter.close();
    await t?.close();
  });
  beforeEach(() => clock.advance(60 * 60_000));

  async function userWithSession() {
    const user = await createTestUser(deps, { email: email() });
    const session = await t.db.withPlatform((tx) =>
      createSession(tx, { userId: user.id, factor: { method: "password" }, now: clock.now() }),
    );
    return { userId: user.id, sessionId: session.id };
  }

  /** Registers a credential of `authenticator` for the user, through the service functions. */
  async function enrol(who: { userId: string; sessionId: string }, authenticator = new SoftwareAuthenticator()) {
    const options = await t.db.withPlatform((tx) => registrationOptions(tx, deps, { ...who, now: clock.now() }));
    const credential = await verifyRegistration(deps, {
      ...who,
      response: authenticator.register(options) as never,
      now: clock.now(),
    });
    const passkeyId = await t.db.withPlatform((tx) =>
      savePasskey(tx, { userId: who.userId, name: "Key", credential, now: clock.now() }),
    );
    return { authenticator, passkeyId, credential };
  }

  async function options(purpose: AssertionPurpose, userId: string | null, binding: ChallengeBinding) {
    const issued = await t.db.withPlatform((tx) =>
      assertionOptions(tx, deps, { purpose, userId, binding, now: clock.now() }),
    );
    if (!issued) throw new Error("no options: the user has no passkey");
    return issued;
  }

  const challengeRows = (binding: ChallengeBinding) =>
    t.db.withPlatform((tx) => {
      const query = tx.selectFrom("webauthn_challenges").selectAll();
      return "sessionId" in binding
        ? query.where("session_id", "=", binding.sessionId).execute()
        : query.where("binding_hash", "=", binding.bindingHash).execute();
    });

  it("makes a passkey a second factor of its user", async () => {
    const who = await userWithSession();
    expect(await t.db.withPlatform((tx) => hasSecondFactor(tx, who.userId))).toBe(false);
    await enrol(who);
    expect(await t.db.withPlatform((tx) => hasSecondFactor(tx, who.userId))).toBe(true);
  });

  it("stores a challenge for one purpose and binding, 5 minutes, and only the latest of its kind", async () => {
    const who = await userWithSession();
    await enrol(who);
    const binding = { sessionId: who.sessionId };
    const first = await options("reauthenticate", who.userId, binding);
    const second = await options("reauthenticate", who.userId, binding);
    const third = await options("second-factor", who.userId, binding);
    const rows = (await challengeRows(binding)).filter((row) => row.used_at === null);
    expect(Object.fromEntries(rows.map((row) => [row.purpose, row.challenge]))).toEqual({
      reauthenticate: second.challenge,
      "second-factor": third.challenge,
    });
    expect(rows.map((row) => row.challenge)).not.toContain(first.challenge);
    for (const row of rows) {
      expect(row.user_id).toBe(who.userId);
      expect(row.expires_at.getTime() - row.created_at.getTime()).toBe(CHALLENGE_LIFETIME_MS);
    }
    // A sign-in's binding is the cookie's hash, never the cookie.
    const cookie = newToken();
    await options("sign-in", null, { bindingHash: hashToken(cookie) });
    const [signIn] = await challengeRows({ bindingHash: hashToken(cookie) });
    expect(signIn).toMatchObject({ purpose: "sign-in", user_id: null, session_id: null });
    expect(JSON.stringify(signIn)).not.toContain(cookie);
  });

  it("issues no options, and stores no challenge, for a user without a passkey", async () => {
    const who = await userWithSession();
    const binding = { sessionId: who.sessionId };
    const none = await t.db.withPlatform((tx) =>
      assertionOptions(tx, deps, { purpose: "reauthenticate", userId: who.userId, binding, now: clock.now() }),
    );
    expect(none).toBeUndefined();
    expect(await challengeRows(binding)).toEqual([]);
  });

  it("clears expired challenges when issuing new ones", async () => {
    const who = await userWithSession();
    await enrol(who);
    await options("reauthenticate", who.userId, { sessionId: who.sessionId });
    clock.advance(CHALLENGE_LIFETIME_MS);
    await options("sign-in", null, { bindingHash: hashToken(newToken()) });
    expect(await challengeRows({ sessionId: who.sessionId })).toEqual([]);
  });

  it("checks the purpose, the binding, the user and single use of a challenge", async () => {
    const who = await userWithSession();
    const { authenticator, passkeyId } = await enrol(who);
    const binding = { sessionId: who.sessionId };
    const verify = (purpose: AssertionPurpose, response: unknown, b: ChallengeBinding = binding) =>
      verifyAssertion(deps, { purpose, binding: b, userId: who.userId, response: response as never, now: clock.now() });

    // Issued for step-up, presented as a second factor: refused, and the step-up challenge stays unused.
    const stepUp = authenticator.assert(await options("reauthenticate", who.userId, binding));
    expect(await outcome(verify("second-factor", stepUp))).toBe("challenge");
    // Presented for another session of the same user: refused.
    const other = await t.db.withPlatform((tx) =>
      createSession(tx, { userId: who.userId, factor: { method: "password" }, now: clock.now() }),
    );
    expect(await outcome(verify("reauthenticate", stepUp, { sessionId: other.id }))).toBe("challenge");
    // Its own purpose and session: accepted once, then a replay.
    const proven = await verify("reauthenticate", stepUp);
    expect(proven).toMatchObject({ passkeyId, userId: who.userId, counter: 1, userVerified: true });
    expect(await outcome(verify("reauthenticate", stepUp))).toBe("challenge");
    // Nothing is recorded until the caller does, in its transaction.
    await t.db.withPlatform((tx) => recordPasskeyUse(tx, proven, clock.now()));
    const row = await t.db.withPlatform((tx) =>
      tx.selectFrom("passkeys").selectAll().where("id", "=", passkeyId).executeTakeFirstOrThrow(),
    );
    expect(Number(row.sign_count)).toBe(1);
    // A sign-in challenge cannot serve a ceremony bound to a session, whatever the cookie.
    const cookie = newToken();
    const signIn = authenticator.assert(await options("sign-in", null, { bindingHash: hashToken(cookie) }));
    expect(await outcome(verify("reauthenticate", signIn))).toBe("challenge");
  });

  it("refuses a counter that does not move forward, also when two uses race", async () => {
    const who = await userWithSession();
    const { authenticator, passkeyId } = await enrol(who);
    const binding = { sessionId: who.sessionId };
    const prove = async (counterValue: number) =>
      verifyAssertion(deps, {
        purpose: "reauthenticate",
        binding,
        userId: who.userId,
        response: authenticator.assert(await options("reauthenticate", who.userId, binding), {
          counter: counterValue,
        }) as never,
        now: clock.now(),
      });
    const ten = await prove(10);
    const alsoTen = await prove(10);
    await t.db.withPlatform((tx) => recordPasskeyUse(tx, ten, clock.now()));
    // Verified against the counter read before the first was recorded: the conditional update refuses it.
    expect(await outcome(t.db.withPlatform((tx) => recordPasskeyUse(tx, alsoTen, clock.now())))).toBe(
      "counter-regression",
    );
    // Verified after: the library refuses it outright.
    expect(await outcome(prove(10))).toBe("counter-regression");
    expect(await outcome(prove(9))).toBe("counter-regression");
    const eleven = await prove(11);
    await t.db.withPlatform((tx) => recordPasskeyUse(tx, eleven, clock.now()));
    const row = await t.db.withPlatform((tx) =>
      tx.selectFrom("passkeys").selectAll().where("id", "=", passkeyId).executeTakeFirstOrThrow(),
    );
    expect(Number(row.sign_count)).toBe(11);
  });

  it("accepts an authenticator that keeps no counter (always 0)", async () => {
    const who = await userWithSession();
    const { authenticator } = await enrol(who);
    const binding = { sessionId: who.sessionId };
    for (let i = 0; i < 2; i++) {
      const response = authenticator.assert(await options("reauthenticate", who.userId, binding), { counter: 0 });
      const proven = await verifyAssertion(deps, {
        purpose: "reauthenticate",
        binding,
        userId: who.userId,
        response: response as never,
        now: clock.now(),
      });
      await t.db.withPlatform((tx) => recordPasskeyUse(tx, proven, clock.now()));
    }
  });

  it("refuses a tampered signature and a tampered attestation", async () => {
    const who = await userWithSession();
    const { authenticator } = await enrol(who);
    const binding = { sessionId: who.sessionId };
    const response = authenticator.assert(await options("reauthenticate", who.userId, binding));
    const signature = Buffer.from(response.response.signature, "base64url");
    signature[signature.length - 1] = (signature.at(-1) ?? 0) ^ 1;
    response.response.signature = signature.toString("base64url");
    const refused = verifyAssertion(deps, {
      purpose: "reauthenticate",
      binding,
      userId: who.userId,
      response: response as never,
      now: clock.now(),
    });
    expect(await outcome(refused)).toBe("bad-signature");

    const registration = await t.db.withPlatform((tx) => registrationOptions(tx, deps, { ...who, now: clock.now() }));
    const { privateKey: otherKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const forged = new SoftwareAuthenticator().register(registration, { format: "packed", attestationKey: otherKey });
    const refusedRegistration = verifyRegistration(deps, { ...who, response: forged as never, now: clock.now() });
    expect(await outcome(refusedRegistration)).toBe("bad-signature");
  });
});
