import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";
import { manualClock } from "../../platform/clock.ts";
import {
  BACKUP_CODE_COUNT,
  checkBackupCode,
  claimBackupCode,
  deleteBackupCodes,
  formatBackupCode,
  newBackupCodes,
  normaliseBackupCode,
  remainingBackupCodes,
  storeBackupCodes,
} from "./backup-codes.ts";
import type { IdentityDeps } from "./deps.ts";
import type { PasswordHasher } from "./passwords.ts";
import { createIdentityTestDeps, createTestUser } from "./testing.ts";

/** The hasher of the deps, counting verifications, so a test can tell what a guess costs. */
function counting(hasher: PasswordHasher) {
  const calls = { verify: 0, verifyNothing: 0 };
  const wrapped: PasswordHasher = {
    hash: (password) => hasher.hash(password),
    verify: (hash, password) => {
      calls.verify++;
      return hasher.verify(hash, password);
    },
    verifyNothing: (password) => {
      calls.verifyNothing++;
      return hasher.verifyNothing(password);
    },
  };
  const reset = () => {
    calls.verify = 0;
    calls.verifyNothing = 0;
  };
  return { wrapped, calls, reset };
}

const FORMATTED = /^[0-9a-hjkmnp-tv-z]{4}(-[0-9a-hjkmnp-tv-z]{4}){3}$/;

describe("backup code text", () => {
  it("reads a code however the user types it: case, dashes, spaces and look-alike letters", () => {
    expect(normaliseBackupCode("abcd-efgh-jkmn-pqrs")).toBe("abcdefghjkmnpqrs");
    expect(normaliseBackupCode(" ABCD EFGH-JKMN pqrs ")).toBe("abcdefghjkmnpqrs");
    // i and l read as 1, o as 0 (Crockford's base32 has none of them).
    expect(normaliseBackupCode("i0l1-OoIL-0000-1111")).toBe("1011001100001111");
  });

  it("refuses what cannot be a code", () => {
    for (const text of [
      "",
      "abcd-efgh-jkmn-pqr",
      "abcd-efgh-jkmn-pqrst",
      "abcd-efgh-jkmn-pqru",
      "abcd_efgh_jkmn_pqrs",
    ]) {
      expect(normaliseBackupCode(text)).toBeNull();
    }
  });

  it("shows a code as four groups of four", () => {
    expect(formatBackupCode("abcdefghjkmnpqrs")).toBe("abcd-efgh-jkmn-pqrs");
  });
});

describe.each(DATABASE_KINDS)("backup codes on %s", (kind) => {
  let t: TestDatabase;
  let deps: IdentityDeps;
  let hasher: ReturnType<typeof counting>;
  const clock = manualClock("2026-04-01T09:00:00.000Z");
  let counter = 0;
  const newUser = () => createTestUser(deps, { email: `backup-${Date.now()}-${++counter}@example.com` });

  beforeAll(async () => {
    t = await openTestDatabase(kind);
    const base = createIdentityTestDeps(t.db, clock);
    hasher = counting(base.passwords);
    deps = { ...base, passwords: hasher.wrapped };
  });
  afterAll(async () => {
    await deps?.rateLimiter.close();
    await t?.close();
  });

  async function issue(userId: string) {
    const { codes, hashed } = await newBackupCodes(deps.passwords);
    await t.db.withPlatform((tx) => storeBackupCodes(tx, userId, hashed, clock.now()));
    return codes;
  }
  const rows = (userId: string) =>
    t.db.withPlatform((tx) => tx.selectFrom("backup_codes").selectAll().where("user_id", "=", userId).execute());

  it("issues ten distinct codes, stored only as Argon2id hashes found by distinct prefixes", async () => {
    const user = await newUser();
    const codes = await issue(user.id);
    expect(codes).toHaveLength(BACKUP_CODE_COUNT);
    for (const code of codes) expect(code).toMatch(FORMATTED);
    expect(new Set(codes).size).toBe(BACKUP_CODE_COUNT);
    const stored = await rows(user.id);
    expect(stored).toHaveLength(BACKUP_CODE_COUNT);
    expect(new Set(stored.map((row) => row.prefix))).toEqual(new Set(codes.map((code) => code.slice(0, 4))));
    const text = JSON.stringify(stored);
    for (const code of codes) {
      expect(text).not.toContain(code);
      expect(text).not.toContain(normaliseBackupCode(code));
    }
    for (const row of stored) expect(row.code_hash).toMatch(/^\$argon2id\$/);
  });

  it("checks a guess against one hash only, whether it is right, wrong, unknown or malformed", async () => {
    const user = await newUser();
    const [first = "", second = ""] = await issue(user.id);
    const byPrefix = Object.fromEntries((await rows(user.id)).map((row) => [row.prefix, row.id]));
    const cost = async (guess: string) => {
      hasher.reset();
      const id = await checkBackupCode(deps, user.id, guess);
      return { id, hashes: hasher.calls.verify + hasher.calls.verifyNothing };
    };
    expect(await cost(first)).toEqual({ id: byPrefix[first.slice(0, 4)], hashes: 1 });
    expect(await cost(second.toUpperCase().replaceAll("-", " "))).toEqual({
      id: byPrefix[second.slice(0, 4)],
      hashes: 1,
    });
    // The right prefix with the rest wrong: one hash, refused.
    const wrongTail = `${first.slice(0, 18)}${first.endsWith("0") ? "1" : "0"}`;
    expect(await cost(wrongTail)).toEqual({ id: null, hashes: 1 });
    expect(await cost("zzzz-zzzz-zzzz-zzzz")).toEqual({ id: null, hashes: 1 });
    expect(await cost("not a code")).toEqual({ id: null, hashes: 1 });
  });

  it("lets a code be spent once, by one of any requests racing with it", async () => {
    const user = await newUser();
    const [code = ""] = await issue(user.id);
    const id = await checkBackupCode(deps, user.id, code);
    expect(id).not.toBeNull();
    const spent = await Promise.all(
      [0, 1, 2].map(() => t.db.withPlatform((tx) => claimBackupCode(tx, user.id, id as string, clock.now()))),
    );
    expect(spent.filter(Boolean)).toHaveLength(1);
    // Spent, it is no longer found.
    expect(await checkBackupCode(deps, user.id, code)).toBeNull();
    expect(await t.db.withPlatform((tx) => remainingBackupCodes(tx, user.id))).toBe(BACKUP_CODE_COUNT - 1);
  });

  it("never accepts one user's code for another", async () => {
    const owner = await newUser();
    const other = await newUser();
    const [code = ""] = await issue(owner.id);
    await issue(other.id);
    expect(await checkBackupCode(deps, other.id, code)).toBeNull();
    const id = (await checkBackupCode(deps, owner.id, code)) as string;
    expect(await t.db.withPlatform((tx) => claimBackupCode(tx, other.id, id, clock.now()))).toBe(false);
  });

  it("replaces every code, used or not, when new ones are issued, and deletes them all", async () => {
    const user = await newUser();
    const old = await issue(user.id);
    const id = (await checkBackupCode(deps, user.id, old[0] ?? "")) as string;
    await t.db.withPlatform((tx) => claimBackupCode(tx, user.id, id, clock.now()));
    const fresh = await issue(user.id);
    expect(await t.db.withPlatform((tx) => remainingBackupCodes(tx, user.id))).toBe(BACKUP_CODE_COUNT);
    expect(await checkBackupCode(deps, user.id, old[1] ?? "")).toBeNull();
    expect(await checkBackupCode(deps, user.id, fresh[1] ?? "")).not.toBeNull();
    expect(await t.db.withPlatform((tx) => deleteBackupCodes(tx, user.id))).toBe(BACKUP_CODE_COUNT);
    expect(await rows(user.id)).toEqual([]);
  });
});
