import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";
import { oathtoolCode, secretOfUri } from "../../../test/support/oathtool.ts";
import { manualClock } from "../../platform/clock.ts";
import type { IdentityDeps } from "./deps.ts";
import { createIdentityTestDeps, createTestUser, TEST_PUBLIC_URL } from "./testing.ts";
import {
  beginTotpEnrolment,
  claimTotpStep,
  deleteTotpFactor,
  findTotpFactor,
  matchTotpCode,
  timeStepOf,
  totpQrCode,
  totpUri,
} from "./totp.ts";

const BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const randomSecret = () => [...randomBytes(32)].map((byte) => BASE32[byte & 31]).join("");
const at = (iso: string, seconds = 0) => new Date(Date.parse(iso) + seconds * 1000);

describe("TOTP codes, checked against oathtool", () => {
  it("accepts exactly the code oathtool computes, for the step it computes it for", async () => {
    for (let i = 0; i < 12; i++) {
      const secret = randomSecret();
      // Random moments over the next decades, at any second of a step.
      const now = new Date(Date.parse("2026-01-01T00:00:00Z") + randomBytes(4).readUInt32BE() * 250);
      const code = await oathtoolCode(secret, now);
      expect(await matchTotpCode(secret, code, now, null)).toBe(timeStepOf(now));
    }
  });

  it("accepts a code one step either side of the server's time, and no further", async () => {
    const secret = randomSecret();
    const now = at("2026-04-01T09:00:10Z");
    const step = timeStepOf(now);
    expect(await matchTotpCode(secret, await oathtoolCode(secret, at("2026-04-01T09:00:10Z", -30)), now, null)).toBe(
      step - 1,
    );
    expect(await matchTotpCode(secret, await oathtoolCode(secret, at("2026-04-01T09:00:10Z", 30)), now, null)).toBe(
      step + 1,
    );
    expect(await matchTotpCode(secret, await oathtoolCode(secret, at("2026-04-01T09:00:10Z", -60)), now, null)).toBe(
      null,
    );
    expect(await matchTotpCode(secret, await oathtoolCode(secret, at("2026-04-01T09:00:10Z", 60)), now, null)).toBe(
      null,
    );
  });

  it("refuses a code of a step already used, or earlier, and a bound beyond the window without throwing", async () => {
    const secret = randomSecret();
    const now = at("2026-04-01T09:00:00Z");
    const step = timeStepOf(now);
    const code = await oathtoolCode(secret, now);
    expect(await matchTotpCode(secret, code, now, step - 1)).toBe(step);
    expect(await matchTotpCode(secret, code, now, step)).toBeNull();
    expect(await matchTotpCode(secret, code, now, step + 5)).toBeNull();
    // The next step's code is still good after this one was used.
    expect(await matchTotpCode(secret, await oathtoolCode(secret, at("2026-04-01T09:00:30Z")), now, step)).toBe(
      step + 1,
    );
  });

  it("refuses malformed codes before any cryptography, and another secret's code", async () => {
    const secret = randomSecret();
    const now = at("2026-04-01T09:00:00Z");
    for (const code of ["", "12345", "1234567", "abcdef", " 123456", "12 345"]) {
      expect(await matchTotpCode(secret, code, now, null)).toBeNull();
    }
    expect(await matchTotpCode(secret, await oathtoolCode(randomSecret(), now), now, null)).toBeNull();
  });

  it("builds an otpauth:// URI an authenticator app reads (SHA-1, 6 digits, 30 s), and its QR code as SVG", async () => {
    const secret = randomSecret();
    const uri = totpUri(TEST_PUBLIC_URL, "ada@example.com", secret);
    const parsed = new URL(uri);
    expect(parsed.protocol).toBe("otpauth:");
    expect(parsed.host).toBe("totp");
    expect(decodeURIComponent(parsed.pathname)).toBe("/Charter (charter.test):ada@example.com");
    // Nothing else: the Key Uri Format's defaults are SHA-1, 6 digits and 30 s, which every app assumes.
    expect(Object.fromEntries(parsed.searchParams)).toEqual({ secret, issuer: "Charter (charter.test)" });
    expect(secretOfUri(uri)).toBe(secret);
    const qr = await totpQrCode(uri);
    const [prefix, data = ""] = qr.split(",");
    expect(prefix).toBe("data:image/svg+xml;base64");
    const svg = Buffer.from(data, "base64").toString("utf8");
    expect(svg).toMatch(/^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"[^>]*>.*<path[^>]* d="M/s);
    expect(svg).not.toContain("<script");
  });
});

describe.each(DATABASE_KINDS)("TOTP factors on %s", (kind) => {
  let t: TestDatabase;
  let deps: IdentityDeps;
  const clock = manualClock("2026-04-01T09:00:00.000Z");
  let counter = 0;
  const newUser = () => createTestUser(deps, { email: `totp-${Date.now()}-${++counter}@example.com` });
  const row = (userId: string) =>
    t.db.withPlatform((tx) =>
      tx.selectFrom("totp_factors").selectAll().where("user_id", "=", userId).executeTakeFirstOrThrow(),
    );

  beforeAll(async () => {
    t = await openTestDatabase(kind);
    deps = createIdentityTestDeps(t.db, clock);
  });
  afterAll(async () => {
    await deps?.rateLimiter.close();
    await t?.close();
  });

  it("stores the secret sealed under the person key, and opens it again", async () => {
    const user = await newUser();
    const now = clock.now();
    const secret = await t.db.withPlatform((tx) => beginTotpEnrolment(tx, deps.keyRing, user.id, now));
    expect(secret).toMatch(/^[A-Z2-7]{32}$/);
    const stored = await row(user.id);
    expect(stored.secret).not.toContain(secret);
    expect(stored).toMatchObject({ confirmed_at: null, last_used_step: null });
    const opened = await t.db.withPlatform((tx) => findTotpFactor(tx, deps.keyRing, user.id));
    expect(opened).toEqual({ secret, createdAt: now, confirmedAt: null, lastUsedStep: null });
  });

  it("replaces an unconfirmed enrolment with a new secret, and never a confirmed one", async () => {
    const user = await newUser();
    const first = await t.db.withPlatform((tx) => beginTotpEnrolment(tx, deps.keyRing, user.id, clock.now()));
    clock.advance(60_000);
    const second = await t.db.withPlatform((tx) => beginTotpEnrolment(tx, deps.keyRing, user.id, clock.now()));
    expect(second).not.toBe(first);
    const pending = await t.db.withPlatform((tx) => findTotpFactor(tx, deps.keyRing, user.id));
    expect(pending?.secret).toBe(second);
    // The first enrolment's start no longer names the row: a code checked against it confirms nothing.
    const step = timeStepOf(clock.now());
    expect(
      await t.db.withPlatform((tx) =>
        claimTotpStep(tx, user.id, step, clock.now(), { enrolment: at("2020-01-01T00:00:00Z") }),
      ),
    ).toBe(false);
    expect(
      await t.db.withPlatform((tx) =>
        claimTotpStep(tx, user.id, step, clock.now(), { enrolment: pending?.createdAt as Date }),
      ),
    ).toBe(true);
    expect(await t.db.withPlatform((tx) => beginTotpEnrolment(tx, deps.keyRing, user.id, clock.now()))).toBeUndefined();
    expect((await t.db.withPlatform((tx) => findTotpFactor(tx, deps.keyRing, user.id)))?.secret).toBe(second);
  });

  it("accepts each time step once, and never one at or before the last accepted", async () => {
    const user = await newUser();
    const now = clock.now();
    const step = timeStepOf(now);
    const factor = await t.db.withPlatform(async (tx) => {
      await beginTotpEnrolment(tx, deps.keyRing, user.id, now);
      return findTotpFactor(tx, deps.keyRing, user.id);
    });
    const claim = (s: number, options?: { enrolment?: Date }) =>
      t.db.withPlatform((tx) => claimTotpStep(tx, user.id, s, now, options));
    // An unconfirmed app proves nothing; confirming is the first use.
    expect(await claim(step)).toBe(false);
    expect(await claim(step, { enrolment: factor?.createdAt as Date })).toBe(true);
    expect(await claim(step, { enrolment: factor?.createdAt as Date })).toBe(false);
    expect(await claim(step)).toBe(false);
    expect(await claim(step - 1)).toBe(false);
    expect(await claim(step + 1)).toBe(true);
    expect(await row(user.id)).toMatchObject({ confirmed_at: now });
    expect(Number((await row(user.id)).last_used_step)).toBe(step + 1);
  });

  it("lets exactly one of two transactions racing with the same step through", async () => {
    const user = await newUser();
    const now = clock.now();
    const step = timeStepOf(now);
    await t.db.withPlatform(async (tx) => {
      await beginTotpEnrolment(tx, deps.keyRing, user.id, now);
      const factor = await findTotpFactor(tx, deps.keyRing, user.id);
      await claimTotpStep(tx, user.id, step, now, { enrolment: factor?.createdAt as Date });
    });
    for (const next of [step + 1, step + 2, step + 3]) {
      const results = await Promise.all(
        [0, 1].map(() => t.db.withPlatform((tx) => claimTotpStep(tx, user.id, next, now))),
      );
      expect(results.filter(Boolean)).toHaveLength(1);
    }
    expect(Number((await row(user.id)).last_used_step)).toBe(step + 3);
  });

  it("deletes the factor, and says whether there was one", async () => {
    const user = await newUser();
    await t.db.withPlatform((tx) => beginTotpEnrolment(tx, deps.keyRing, user.id, clock.now()));
    expect(await t.db.withPlatform((tx) => deleteTotpFactor(tx, user.id))).toEqual({ confirmed: false });
    expect(await t.db.withPlatform((tx) => deleteTotpFactor(tx, user.id))).toBeUndefined();
  });
});
