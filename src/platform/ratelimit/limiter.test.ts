import { randomBytes } from "node:crypto";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";
import { manualClock } from "../clock.ts";
import { addressBucket, createRateLimiter, type RateLimiter, type RateRule } from "./limiter.ts";

describe("addressBucket", () => {
  it("keeps an IPv4 address as it is", () => {
    expect(addressBucket("203.0.113.7")).toBe("203.0.113.7");
    expect(addressBucket("10.0.0.1")).not.toBe(addressBucket("10.0.0.2"));
  });

  it("unwraps an IPv4-mapped IPv6 address", () => {
    expect(addressBucket("::ffff:1.2.3.4")).toBe("1.2.3.4");
    expect(addressBucket("::FFFF:1.2.3.4")).toBe("1.2.3.4");
  });

  it("counts one IPv6 /64 as one source", () => {
    expect(addressBucket("2001:db8:1:2::1")).toBe(addressBucket("2001:db8:1:2:ffff:eeee:dddd:cccc"));
    expect(addressBucket("2001:db8:1:2::1")).toBe("2001:db8:1:2::/64");
    expect(addressBucket("2001:db8:1:2::1")).not.toBe(addressBucket("2001:db8:1:3::1"));
    expect(addressBucket("2001:db8::1")).not.toBe(addressBucket("2001:db9::1"));
  });

  it("gives compressed, expanded and differently cased forms of one address the same bucket", () => {
    const forms = [
      "2001:db8::1",
      "2001:0db8:0000:0000:0000:0000:0000:0001",
      "2001:DB8:0:0:0:0:0:1",
      "2001:db8:0:0::1",
      "2001:db8:0000::0:1",
    ];
    expect(new Set(forms.map(addressBucket))).toEqual(new Set(["2001:db8:0:0::/64"]));
    expect(addressBucket("::1")).toBe(addressBucket("0:0:0:0:0:0:0:1"));
    expect(addressBucket("fe80::1:2:3:4")).toBe(addressBucket("fe80:0:0:0:9:9:9:9"));
  });
});

describe.each(DATABASE_KINDS)("rate limiter on %s", (kind) => {
  let t: TestDatabase;
  const open: RateLimiter[] = [];
  const rule: RateRule = { name: "requests", limit: 3, windowSeconds: 60 };

  beforeAll(async () => {
    t = await openTestDatabase(kind);
  });
  afterEach(async () => {
    for (const limiter of open.splice(0)) await limiter.close();
  });
  afterAll(() => t?.close());

  function limiter(clock = manualClock(), hashKey = randomBytes(32)) {
    const created = createRateLimiter({ db: t.db, clock, hashKey });
    open.push(created);
    return created;
  }

  const bucketRows = () => t.db.withPlatform((tx) => tx.selectFrom("rate_limit_buckets").selectAll().execute());
  const keyHashes = async () => new Set((await bucketRows()).map((r) => Buffer.from(r.key_hash).toString("hex")));

  it("allows the limit, then refuses until the next window", async () => {
    const clock = manualClock("2026-03-01T10:00:10Z");
    const l = limiter(clock);
    const key = { kind: "address", address: "203.0.113.7" } as const;
    const decisions = [];
    for (let i = 0; i < 4; i++) decisions.push(await l.consume(key, rule));
    expect(decisions.map((d) => d.allowed)).toEqual([true, true, true, false]);
    expect(decisions.map((d) => d.remaining)).toEqual([2, 1, 0, 0]);
    for (const d of decisions) expect(d.retryAfter).toBeGreaterThan(0);
    expect(decisions[3]?.retryAfter).toBe(50);

    clock.advance(30_000);
    expect((await l.consume(key, rule)).allowed).toBe(false);
    clock.advance(20_000);
    const next = await l.consume(key, rule);
    expect(next).toMatchObject({ allowed: true, remaining: 2 });
  });

  it("keeps keys, kinds and rules apart, and one IPv6 /64 together", async () => {
    const l = limiter();
    const one = { limit: 1, windowSeconds: 60 };
    expect((await l.consume({ kind: "address", address: "2001:db8:5:6::1" }, { name: "a", ...one })).allowed).toBe(
      true,
    );
    expect((await l.consume({ kind: "address", address: "2001:db8:5:6::99" }, { name: "a", ...one })).allowed).toBe(
      false,
    );
    expect((await l.consume({ kind: "address", address: "2001:db8:5:7::1" }, { name: "a", ...one })).allowed).toBe(
      true,
    );
    expect((await l.consume({ kind: "address", address: "2001:db8:5:6::1" }, { name: "b", ...one })).allowed).toBe(
      true,
    );
    expect((await l.consume({ kind: "account", id: "x" }, { name: "a", ...one })).allowed).toBe(true);
    expect((await l.consume({ kind: "tenant", id: "x" }, { name: "a", ...one })).allowed).toBe(true);
    expect((await l.consume({ kind: "account", id: "x" }, { name: "a", ...one })).allowed).toBe(false);
  });

  it("counts concurrent hits at the start of a window, so a burst cannot slip past the limit", async () => {
    const hashKey = randomBytes(32);
    const l = limiter(manualClock(), hashKey);
    const key = { kind: "address", address: "198.51.100.20" } as const;
    const decisions = await Promise.all(Array.from({ length: 10 }, () => l.consume(key, rule)));
    expect(decisions.filter((d) => d.allowed)).toHaveLength(rule.limit);
    await l.flush();
    const second = limiter(manualClock(), hashKey);
    expect((await second.consume(key, rule)).allowed).toBe(false);
  });

  it("keeps its state in the database: another instance sees the hits once flushed", async () => {
    const hashKey = randomBytes(32);
    const clock = manualClock();
    const key = { kind: "address", address: "198.51.100.7" } as const;
    const first = limiter(clock, hashKey);
    for (let i = 0; i < rule.limit; i++) expect((await first.consume(key, rule)).allowed).toBe(true);
    await first.flush();

    const second = limiter(clock, hashKey);
    expect(await second.consume(key, rule)).toMatchObject({ allowed: false, remaining: 0 });
    // Another address, and the same address under another hash key, are counted apart.
    expect((await second.consume({ kind: "address", address: "198.51.100.8" }, rule)).allowed).toBe(true);
    expect((await limiter(clock).consume(key, rule)).allowed).toBe(true);
  });

  it("adds the hits of two instances in one window", async () => {
    const hashKey = randomBytes(32);
    const clock = manualClock();
    const key = { kind: "account", id: "acct-2" } as const;
    const a = limiter(clock, hashKey);
    const b = limiter(clock, hashKey);
    expect((await a.consume(key, rule)).allowed).toBe(true);
    expect((await b.consume(key, rule)).allowed).toBe(true);
    await a.flush();
    await b.flush();
    expect(await b.consume(key, rule)).toMatchObject({ allowed: true, remaining: 0 });
    await b.flush();
    expect((await limiter(clock, hashKey).consume(key, rule)).allowed).toBe(false);
  });

  it("a late flush of an old window does not wipe the count of the current one", async () => {
    const hashKey = randomBytes(32);
    const key = { kind: "address", address: "198.51.100.30" } as const;
    const behind = limiter(manualClock("2026-01-01T00:00:59Z"), hashKey);
    const current = manualClock("2026-01-01T00:01:01Z");
    const ahead = limiter(current, hashKey);
    await behind.consume(key, rule);
    for (let i = 0; i < rule.limit; i++) await ahead.consume(key, rule);
    await ahead.flush();
    await behind.flush();
    expect((await limiter(current, hashKey).consume(key, rule)).allowed).toBe(false);
  });

  it("stores no address or id in clear", async () => {
    const address = "192.0.2.123";
    const before = await keyHashes();
    const l = limiter();
    await l.consume({ kind: "address", address }, rule);
    await l.consume({ kind: "account", id: "account-secret-id" }, rule);
    await l.consume({ kind: "address", address: "2001:db8:aa:bb::1" }, rule);
    await l.flush();
    const rows = (await bucketRows()).filter((r) => !before.has(Buffer.from(r.key_hash).toString("hex")));
    expect(rows).toHaveLength(3);
    const dump = JSON.stringify(
      await t.db.withPlatform((tx) => tx.selectFrom("rate_limit_buckets").selectAll().execute()),
    );
    for (const row of rows) {
      const keyHash = Buffer.from(row.key_hash);
      expect(keyHash).toHaveLength(32);
      for (const secret of [address, "192.0.2", "account-secret-id", "2001:db8:aa:bb"]) {
        expect(keyHash.includes(Buffer.from(secret))).toBe(false);
        expect(keyHash.toString("latin1")).not.toContain(secret);
      }
    }
    for (const secret of [address, "account-secret-id", "2001:db8:aa:bb"]) expect(dump).not.toContain(secret);
  });

  it("exact mode never allows more than the limit across instances", async () => {
    const hashKey = randomBytes(32);
    const clock = manualClock();
    const a = limiter(clock, hashKey);
    const b = limiter(clock, hashKey);
    const key = { kind: "account", id: "acct-1" } as const;
    const signIn = { name: "sign-in", limit: 5, windowSeconds: 900 };
    const decisions = await Promise.all(
      Array.from({ length: 24 }, (_, i) => (i % 2 ? a : b).consume(key, signIn, { exact: true })),
    );
    expect(decisions.filter((d) => d.allowed)).toHaveLength(signIn.limit);
    expect(decisions.map((d) => d.remaining).sort((x, y) => x - y)).toEqual([...Array(24 - 4).fill(0), 1, 2, 3, 4]);
    expect((await a.consume(key, signIn, { exact: true })).allowed).toBe(false);
    clock.advance(900_000);
    expect((await b.consume(key, signIn, { exact: true })).allowed).toBe(true);
  });

  it("hooks decide before any limit: the first verdict wins", () => {
    const l = limiter();
    const facts = { address: "203.0.113.1", method: "GET", path: "/x", routeFound: false };
    expect(l.check(facts)).toBeUndefined();
    l.addHook((f) => (f.address === "203.0.113.1" ? "deny" : undefined));
    l.addHook(() => "allow");
    expect(l.check(facts)).toBe("deny");
    expect(l.check({ ...facts, address: "203.0.113.2" })).toBe("allow");
  });

  it("sweeps rows whose window has expired", async () => {
    const clock = manualClock("2026-05-01T00:00:00Z");
    const l = limiter(clock);
    const before = await keyHashes();
    await l.consume({ kind: "address", address: "192.0.2.50" }, rule);
    await l.consume({ kind: "token", id: "long-lived" }, { name: "t", limit: 5, windowSeconds: 3600 });
    await l.flush();
    const mine = [...(await keyHashes())].filter((h) => !before.has(h));
    expect(mine).toHaveLength(2);

    clock.advance(60_000 + 60_000 + 1);
    await l.flush();
    const left = await keyHashes();
    expect(mine.filter((h) => left.has(h))).toHaveLength(1);
    const survivor = (await bucketRows()).find((r) => mine.includes(Buffer.from(r.key_hash).toString("hex")));
    expect(survivor?.expires_at.toISOString()).toBe("2026-05-01T01:00:00.000Z");
  });
});
