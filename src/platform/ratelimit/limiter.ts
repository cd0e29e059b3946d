import { createHmac } from "node:crypto";
import { isIPv4, isIPv6 } from "node:net";
import { sql } from "kysely";
import type { Clock } from "../clock.ts";
import type { Database } from "../db/index.ts";

/** What a limit counts: a source address (IPv6 per /64), an account, a tenant or a token. */
export type RateKey =
  | { kind: "address"; address: string }
  | { kind: "account"; id: string }
  | { kind: "tenant"; id: string }
  | { kind: "token"; id: string };

export interface RateRule {
  /** A name that keeps rules apart when they count the same key (e.g. "requests", "sign-in"). */
  name: string;
  limit: number;
  windowSeconds: number;
}

export interface RateDecision {
  allowed: boolean;
  remaining: number;
  /** Seconds until the window resets. */
  retryAfter: number;
}

/** What the allow/deny hooks see: every request, including those to unknown routes. */
export interface RequestFacts {
  address: string;
  method: string;
  path: string;
  routeFound: boolean;
}

/** A hook may allow (skip limits), deny (refuse at once) or stay silent. */
export type RequestHook = (facts: RequestFacts) => "allow" | "deny" | undefined;

export interface RateLimiter {
  /**
   * Counts one hit against `rule` for `key`. Fast mode decides from this process's counters plus the last
   * total read from the database (shared across instances, flushed every second); `exact` writes through
   * to the database first, for limits that must hold across instances to the hit (sign-in throttling).
   */
  consume(key: RateKey, rule: RateRule, options?: { exact?: boolean }): Promise<RateDecision>;
  addHook(hook: RequestHook): void;
  check(facts: RequestFacts): "allow" | "deny" | undefined;
  flush(): Promise<void>;
  close(): Promise<void>;
}

/** Normalises an address so that one IPv6 /64 (one customer line) counts as one source. */
export function addressBucket(address: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped?.[1]) return mapped[1];
  if (isIPv4(address)) return address;
  if (!isIPv6(address)) return address;
  const [head = "", tail = ""] = address.split("::");
  const headParts = head === "" ? [] : head.split(":");
  const tailParts = tail === "" ? [] : tail.split(":");
  const missing = address.includes("::") ? 8 - headParts.length - tailParts.length : 0;
  const groups = [...headParts, ...Array(missing).fill("0"), ...tailParts];
  return `${groups
    .slice(0, 4)
    .map((g) => Number.parseInt(g, 16).toString(16))
    .join(":")}::/64`;
}

function keyText(key: RateKey): string {
  return key.kind === "address" ? `address:${addressBucket(key.address)}` : `${key.kind}:${key.id}`;
}

interface Counter {
  windowStart: number;
  /** Total known in the database at the last read or flush. */
  stored: number;
  /** Hits counted here and not flushed yet. */
  pending: number;
  expiresAt: number;
}

const FLUSH_MS = 1000;
const SWEEP_MS = 60_000;

/**
 * The platform's one rate limiter. State lives in `rate_limit_buckets` (fixed windows), keyed by an HMAC of
 * the key so that no address or account id is stored in clear.
 */
export function createRateLimiter(deps: { db: Database; clock: Clock; hashKey: Buffer }): RateLimiter {
  const { db, clock, hashKey } = deps;
  const counters = new Map<string, Counter>();
  const hooks: RequestHook[] = [];
  let lastSweep = 0;

  const hash = (text: string) => createHmac("sha256", hashKey).update(text).digest();
  const windowOf = (rule: RateRule, now: number) =>
    Math.floor(now / (rule.windowSeconds * 1000)) * rule.windowSeconds * 1000;

  async function write(keyHash: Buffer, windowStart: number, hits: number, expiresAt: number): Promise<number> {
    const result = await db.withPlatform((tx) =>
      sql<{ hits: number }>`
        INSERT INTO rate_limit_buckets (key_hash, window_start, hits, expires_at)
        VALUES (${keyHash}, ${new Date(windowStart)}, ${hits}, ${new Date(expiresAt)})
        ON CONFLICT (key_hash) DO UPDATE SET
          hits = CASE WHEN rate_limit_buckets.window_start = EXCLUDED.window_start
                      THEN rate_limit_buckets.hits + EXCLUDED.hits ELSE EXCLUDED.hits END,
          window_start = EXCLUDED.window_start,
          expires_at = EXCLUDED.expires_at
        -- A late flush of a past window (another instance already counts the next one) must not reset it.
        WHERE rate_limit_buckets.window_start <= EXCLUDED.window_start
        RETURNING hits`.execute(tx),
    );
    return result.rows[0]?.hits ?? hits;
  }

  async function read(keyHash: Buffer, windowStart: number): Promise<number> {
    const row = await db.withPlatform((tx) =>
      tx
        .selectFrom("rate_limit_buckets")
        .select(["hits", "window_start"])
        .where("key_hash", "=", keyHash)
        .executeTakeFirst(),
    );
    return row && row.window_start.getTime() === windowStart ? row.hits : 0;
  }

  async function flush(): Promise<void> {
    const now = clock.now().getTime();
    for (const [id, counter] of counters) {
      if (counter.pending > 0) {
        const delta = counter.pending;
        counter.pending = 0;
        // Hits counted while the write was in flight stay pending for the next flush.
        counter.stored = await write(Buffer.from(id, "hex"), counter.windowStart, delta, counter.expiresAt);
      }
      if (counter.expiresAt <= now) counters.delete(id);
    }
    if (now - lastSweep >= SWEEP_MS) {
      lastSweep = now;
      await db.withPlatform((tx) =>
        tx.deleteFrom("rate_limit_buckets").where("expires_at", "<", new Date(now)).execute(),
      );
    }
  }

  // One flush at a time. An explicit flush() waits for one already running (which may have passed over
  // hits counted since) and then runs its own, so every hit counted before the call is written when it returns.
  let flushing: Promise<void> | undefined;
  function flushOnce(): Promise<void> {
    flushing ??= flush().finally(() => {
      flushing = undefined;
    });
    return flushing;
  }
  async function flushAll(): Promise<void> {
    await flushing?.catch(() => {});
    await flushOnce();
  }
  const timer = setInterval(() => {
    flushOnce().catch(() => {});
  }, FLUSH_MS);
  timer.unref();

  return {
    async consume(key, rule, options = {}) {
      const now = clock.now().getTime();
      const windowStart = windowOf(rule, now);
      const expiresAt = windowStart + rule.windowSeconds * 1000;
      const retryAfter = Math.max(1, Math.ceil((expiresAt - now) / 1000));
      const keyHash = hash(`${rule.name}|${keyText(key)}`);
      const id = keyHash.toString("hex");

      if (options.exact) {
        const total = await write(keyHash, windowStart, 1, expiresAt);
        return { allowed: total <= rule.limit, remaining: Math.max(0, rule.limit - total), retryAfter };
      }

      let counter = counters.get(id);
      if (!counter || counter.windowStart !== windowStart) {
        const stored = await read(keyHash, windowStart);
        // Concurrent hits all read at the start of a window: they must share one counter, or each counts alone.
        counter = counters.get(id);
        if (!counter || counter.windowStart !== windowStart) {
          counter = { windowStart, stored, pending: 0, expiresAt };
          counters.set(id, counter);
        }
      }
      const used = counter.stored + counter.pending;
      if (used >= rule.limit) return { allowed: false, remaining: 0, retryAfter };
      counter.pending += 1;
      return { allowed: true, remaining: rule.limit - used - 1, retryAfter };
    },
    addHook(hook) {
      hooks.push(hook);
    },
    check(facts) {
      for (const hook of hooks) {
        const verdict = hook(facts);
        if (verdict) return verdict;
      }
      return undefined;
    },
    flush: flushAll,
    async close() {
      clearInterval(timer);
      await flushAll();
    },
  };
}
