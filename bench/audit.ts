import { createHash } from "node:crypto";
import { loadavg } from "node:os";
import { sql } from "kysely";
import { type Audit, createAudit } from "../src/platform/audit/audit.ts";
import { canonicalBytes } from "../src/platform/audit/canonical.ts";
import { chainHeads, eventsAfter, type StreamedEvent, streamEvents } from "../src/platform/audit/chains.ts";
import {
  type AuditEvent,
  canonicalEvent,
  type NewEvent,
  type StoredEvent,
  storedEventHash,
} from "../src/platform/audit/event.ts";
import { VERIFY_CONCURRENCY, verifyChains } from "../src/platform/audit/verify.ts";
import { systemClock } from "../src/platform/clock.ts";
import { createTestKeyRing } from "../src/platform/crypto/testing.ts";
import {
  type BenchServing,
  createBenchDatabase,
  dropBenchDatabase,
  openBenchServing,
  postgresReachable,
  settleBenchDatabase,
} from "../src/platform/db/bench-support.ts";
import type { Database } from "../src/platform/db/index.ts";
import { uuidv7 } from "../src/platform/ids.ts";
import { createTenant } from "../src/platform/tenancy/tenants.ts";
import { type CpuSample, fmt, measureCpu, median, table } from "./harness.ts";

/**
 * Audit log throughput on PostgreSQL (issue 4 item 6): appends through audit.recordMany and audit.record
 * across 1,000 tenant chains in small batches and on one hot chain, and verifyChains over every event written, each beside a
 * baseline measured in the same run, so the cost of the chain and of the hashing is visible. See
 * bench/README.md. It reports; it fails (exit 1) only when verification finds a broken chain, which would
 * make every figure meaningless.
 */

export interface AuditBenchSettings {
  adminUrl: string;
  /** Seconds each variant runs per round, and rounds (the variants' order rotates from round to round). */
  seconds: number;
  rounds: number;
  /** Transactions in flight, and the size of the pool they share. */
  concurrency: number;
  tenants: number;
  /** At least this many events in the database when verification is measured. */
  verifyEvents: number;
}

const APPEND_TARGET = 5_000;
const VERIFY_TARGET = 200_000;
const BATCH = 10;
/** Events per transaction when filling the log for verification: faster, and not what is measured. */
const FILL_BATCH = 250;
/** Events timed for the breakdown of verification's cost. */
const PROFILE_EVENTS = 50_000;
const DATABASE = "charter_bench_audit";

/** A placeholder hash for the baselines: they store the row, they do not compute a chain. */
const FIXED_HASH = "ab".repeat(32);
const POLICY = "tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid";

/**
 * Two tables of the audit events' exact shape (columns, checks, keys, the subjects' GIN index, the tenant
 * foreign key, row-level security) for the baselines, and a copy of the chain heads for the chained one.
 */
function baselineStatements(): string[] {
  const events = (name: string) => [
    `CREATE TABLE ${name} (LIKE audit_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)`,
    `ALTER TABLE ${name} ADD FOREIGN KEY (tenant_id) REFERENCES tenants (id)`,
    `ALTER TABLE ${name} ENABLE ROW LEVEL SECURITY`,
    `ALTER TABLE ${name} FORCE ROW LEVEL SECURITY`,
    `CREATE POLICY tenant_isolation ON ${name} USING (${POLICY}) WITH CHECK (${POLICY})`,
  ];
  return [
    ...events("bench_plain_events"),
    ...events("bench_chained_events"),
    "CREATE TABLE bench_chain_heads (LIKE audit_chain_heads INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)",
    "ALTER TABLE bench_chain_heads ADD FOREIGN KEY (chain_tenant_id) REFERENCES tenants (id)",
  ];
}

type VariantKey = "plain" | "chained" | "audit" | "batched";
const VARIANTS: Record<VariantKey, string> = {
  plain: "(a) plain INSERT, no chain",
  chained: "(b) chain SQL only",
  audit: "(c) audit.record",
  batched: "(d) audit.recordMany",
};

/** What a writer of the `changes` stream typically appends: a record update naming its fields, no personal block. */
function changeEvent(tenantId: string, n: number): NewEvent {
  return {
    tenantId,
    stream: "changes",
    actor: { kind: "user", id: "0190a4f2-7c1e-7d3a-9b2c-4e5f6a7b8c9d" },
    action: "record.updated",
    target: { type: "contact", id: uuidv7() },
    subjects: ["0190a4f2-7c1e-7d3a-9b2c-000000000001"],
    details: { fields: ["email", "phone"], module: "contacts", n },
    requestId: `req-${n}`,
  };
}

/**
 * A baseline's row for an event: the columns audit.ts writes, with a fresh id, the time now, sequence
 * `seq`, no personal block and the placeholder hash (the baselines store rows, they compute no chain).
 */
function rowValues(e: NewEvent, chainId: string, seq: number, prev: string) {
  return sql`(${sql.join([
    sql`${e.tenantId}::uuid`,
    sql`${uuidv7()}::uuid`,
    sql`${chainId}`,
    sql`${seq}::bigint`,
    sql`1::smallint`,
    sql`${e.stream}`,
    sql`${new Date()}::timestamptz`,
    sql`${e.actor.kind}`,
    sql`${e.actor.id}::uuid`,
    sql`${e.action}`,
    sql`${e.target.type}`,
    sql`${e.target.id}::uuid`,
    sql`${[...(e.subjects ?? [])]}::uuid[]`,
    sql`${JSON.stringify(e.details ?? {})}::jsonb`,
    sql`${"{}"}::jsonb`,
    sql`${e.requestId ?? null}`,
    sql`${null}`,
    sql`${null}::uuid`,
    sql`${prev}`,
    sql`${FIXED_HASH}`,
  ])})`;
}

const EVENT_COLUMNS = sql.raw(
  "tenant_id, id, chain_id, seq, v, stream, at, actor_kind, actor_id, action, target_type, target_id, " +
    "subject_ids, details, personal, request_id, cause_kind, cause_id, prev_hash, hash",
);

/** Per tenant, the next sequence number of (a)'s rows (they have no head to take it from). */
const plainSeq = new Map<string, number>();

/** Appends `count` events to the tenant's changes chain in one transaction, the way the variant does it. */
async function appendBatch(db: Database, audit: Audit, v: VariantKey, tenantId: string, count: number, n: number) {
  const chainId = `tenant/${tenantId}/changes`;
  const events = Array.from({ length: count }, (_, i) => changeEvent(tenantId, n + i));
  await db.withTenant({ tenantId }, async (tx) => {
    if (v === "batched") {
      await audit.recordMany(tx, events);
      return;
    }
    for (const event of events) {
      if (v === "audit") {
        await audit.record(tx, event);
      } else if (v === "plain") {
        const seq = (plainSeq.get(tenantId) ?? 0) + 1;
        plainSeq.set(tenantId, seq);
        await sql`INSERT INTO bench_plain_events (${EVENT_COLUMNS})
          VALUES ${rowValues(event, chainId, seq, FIXED_HASH)}`.execute(tx);
      } else {
        // audit.ts's two statements: advance the head under its row lock, then the event and the head's hash.
        const { rows } = await sql<{ sequence: string; hash: string }>`
          INSERT INTO bench_chain_heads AS h (chain_id, chain_tenant_id, stream, sequence, hash, updated_at)
          VALUES (${chainId}, ${tenantId}::uuid, 'changes', 1, ${"0".repeat(64)}, ${new Date()})
          ON CONFLICT (chain_id) DO UPDATE SET sequence = h.sequence + 1, updated_at = excluded.updated_at
          RETURNING h.sequence, h.hash`.execute(tx);
        const head = rows[0] as { sequence: string; hash: string };
        const row = rowValues(event, chainId, Number(head.sequence), head.hash);
        await sql`WITH e AS (INSERT INTO bench_chained_events (${EVENT_COLUMNS}) VALUES ${row} RETURNING id)
          UPDATE bench_chain_heads SET hash = ${FIXED_HASH} WHERE chain_id = ${chainId}`.execute(tx);
      }
    }
  });
}

/** A measured run of `events` events (CpuSample's count). */
type Sample = Omit<CpuSample, "count"> & { events: number };

/** Runs `work` (which returns how many events it handled) and measures its time and CPU. */
async function measured(serving: BenchServing, work: () => Promise<number>): Promise<Sample> {
  const { count, ...rest } = await measureCpu(serving, work);
  return { events: count, ...rest };
}

/**
 * Keeps `concurrency` transactions in flight for `seconds`, each appending `batch` events to the next
 * tenant in turn (so no two writers share a chain while there are more tenants than writers).
 */
function drive(
  serving: BenchServing,
  audit: Audit,
  v: VariantKey,
  tenants: string[],
  options: { seconds: number; concurrency: number; batch: number },
): Promise<Sample> {
  return measured(serving, async () => {
    let next = 0;
    let events = 0;
    const deadline = performance.now() + options.seconds * 1000;
    const worker = async () => {
      while (performance.now() < deadline) {
        const k = next++;
        const tenant = tenants[k % tenants.length] as string;
        await appendBatch(serving.db, audit, v, tenant, options.batch, k * options.batch);
        events += options.batch;
      }
    };
    await Promise.all(Array.from({ length: options.concurrency }, worker));
    return events;
  });
}

type Results = Partial<Record<VariantKey, Sample[]>>;

interface AppendWorkload {
  name: string;
  variants: VariantKey[];
  tenants: string[];
  batch: number;
  target: number | null;
}

async function runAppends(serving: BenchServing, audit: Audit, w: AppendWorkload, s: AuditBenchSettings) {
  const options = { concurrency: s.concurrency, batch: w.batch };
  const keys = w.variants;
  for (const v of keys) await drive(serving, audit, v, w.tenants, { ...options, seconds: 1 });
  const results = Object.fromEntries(keys.map((k) => [k, [] as Sample[]])) as Results;
  for (let round = 0; round < s.rounds; round++) {
    const order = keys.map((_, i) => keys[(i + round) % keys.length] as VariantKey);
    for (const v of order) {
      const sample = await drive(serving, audit, v, w.tenants, { ...options, seconds: s.seconds });
      results[v]?.push(sample);
      console.log(
        `  ${w.name}, round ${round + 1}, ${VARIANTS[v]}: ${fmt.int(sample.events / sample.seconds)} events/s`,
      );
    }
  }
  return results;
}

const rate = (samples: Sample[]) =>
  samples.reduce((n, x) => n + x.events, 0) / samples.reduce((n, x) => n + x.seconds, 0);

function verdict(value: number, target: number | null): [string, string, string] {
  if (target === null) return ["-", "-", "(for scale)"];
  return [fmt.int(target), fmt.ratio(value / target), value >= target ? "PASS" : "BELOW"];
}

function resultRows(
  workload: string,
  results: Record<string, Sample[]>,
  names: Record<string, string>,
  target: number | null,
  measuredKey: string,
) {
  return Object.entries(results).map(([v, samples]) => {
    const r = rate(samples);
    const events = samples.reduce((n, x) => n + x.events, 0);
    const seconds = samples.reduce((n, x) => n + x.seconds, 0);
    return [
      workload,
      names[v] ?? v,
      fmt.int(events),
      seconds.toFixed(2),
      fmt.int(r),
      samples.map((x) => fmt.int(x.events / x.seconds)).join(" "),
      fmt.int(median(samples.map((x) => x.nodeCpu))),
      samples.every((x) => x.dbCpu !== null) ? fmt.int(median(samples.map((x) => x.dbCpu as number))) : "-",
      ...(v === measuredKey ? verdict(r, target) : ["", "", ""]),
    ];
  });
}

/** Per round, the throughput of `v` over `base`'s; their median. */
function ratio(results: Record<string, Sample[]>, v: string, base: string): string {
  const a = results[base] ?? [];
  const b = results[v] ?? [];
  const perRound = a.map((x, i) => (b[i] ? b[i].events / b[i].seconds : 0) / (x.events / x.seconds));
  return `${fmt.ratio(median(perRound))} (${perRound.map(fmt.ratio).join(" ")})`;
}

/** Fills the log in batches of FILL_BATCH per transaction until it holds at least `total` events. */
async function fill(db: Database, audit: Audit, tenants: string[], total: number, concurrency: number) {
  const [row] = await db.withSnapshot(
    async (s) =>
      (await sql<{ n: string }>`SELECT coalesce(sum(sequence), 0) AS n FROM audit_chain_heads`.execute(s.tx)).rows,
  );
  let have = Number(row?.n ?? 0);
  let next = 0;
  const start = performance.now();
  const worker = async () => {
    while (have < total) {
      have += FILL_BATCH;
      const k = next++;
      await appendBatch(db, audit, "batched", tenants[k % tenants.length] as string, FILL_BATCH, k * FILL_BATCH);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return { events: have, seconds: (performance.now() - start) / 1000 };
}

/**
 * verifyChains' traversal without the checks: the same snapshot, the same tenants read at once (its
 * concurrency), each tenant's events streamed in one statement through chains.ts and turned into events,
 * nothing hashed. The difference to verifyChains is the cost of the checks (canonical form and SHA-256).
 */
async function readOnly(db: Database, concurrency: number): Promise<number> {
  let events = 0;
  const count = () => {
    events += 1;
  };
  await db.withSnapshot(async (snapshot) => {
    await snapshot.forEachTenant((id, _tx, copyRows) => streamEvents(copyRows, id, undefined, count).then(() => {}), {
      concurrency,
    });
    await streamEvents(snapshot.copyRows, null, undefined, count);
  });
  return events;
}

/** verifyChains found a failure: the bench's own writes broke a chain, so no figure can be trusted. */
export class BrokenChain extends Error {
  override name = "BrokenChain";
}

async function runVerify(serving: BenchServing, s: AuditBenchSettings) {
  const { db } = serving;
  const results: Record<"read" | "verify", Sample[]> = { read: [], verify: [] };
  const keys = ["verify", "read"] as const;
  const run = async (v: (typeof keys)[number]) => {
    if (v === "read") return readOnly(db, VERIFY_CONCURRENCY);
    const report = await verifyChains(db);
    if (report.failures.length > 0) {
      throw new BrokenChain(`verification failed: ${JSON.stringify(report.failures.slice(0, 3))}`);
    }
    return report.checked.events;
  };
  // Warm-up, as each append variant has: one pass of each, not measured (compiling the hot paths).
  for (const v of keys) await run(v);
  for (let round = 0; round < s.rounds; round++) {
    const order = keys.map((_, i) => keys[(i + round) % keys.length] as (typeof keys)[number]);
    for (const v of order) {
      const sample = await measured(serving, () => run(v));
      results[v].push(sample);
      console.log(
        `  verify, round ${round + 1}, ${v}: ${fmt.int(sample.events)} events in ${sample.seconds.toFixed(2)} s`,
      );
    }
  }
  return results;
}

/**
 * Where verification's time goes, per event, over events held in memory (no database): the generic canonical
 * form, the writer specialised to version 1 that eventHash uses, SHA-256 over the text, storedEventHash
 * (the v1 writer and SHA-256 over prev ‖ text, on an event read through the driver, as the failure path
 * hashes) and StreamedEvent.hashAt (the same hash written straight from a streamed row's columns, as
 * verifyChains hashes every event).
 */
async function profile(db: Database): Promise<string[][]> {
  const sample: StoredEvent[] = [];
  const streamed: StreamedEvent[] = [];
  await db.withSnapshot(async (snapshot) => {
    const heads = await chainHeads(snapshot.tx);
    await snapshot.forEachTenant(async (id, tx, copyRows) => {
      if (streamed.length < PROFILE_EVENTS)
        await streamEvents(copyRows, id, undefined, (e) => streamed.push(e.detached()));
      for (const head of heads.filter((h) => h.tenantId === id)) {
        if (sample.length >= PROFILE_EVENTS) return;
        sample.push(...(await eventsAfter(tx, head, 0, PROFILE_EVENTS - sample.length)));
      }
    });
  });
  const unhashed: AuditEvent[] = sample.map(({ hash: _, ...rest }) => rest);
  let bytes = 0;
  const time = (fn: (e: AuditEvent) => void) => {
    for (const e of unhashed.slice(0, 2_000)) fn(e);
    const start = performance.now();
    for (const e of unhashed) fn(e);
    return ((performance.now() - start) * 1000) / unhashed.length;
  };
  const canonicalUs = time((e) => {
    bytes += canonicalBytes(e).length;
  });
  const v1Us = time((e) => {
    Buffer.from(canonicalEvent(e), "utf8");
  });
  const canonicalText = unhashed.map((e) => canonicalBytes(e));
  let i = 0;
  const shaUs = time(() => {
    const e = canonicalText[i++ % canonicalText.length] as Buffer;
    createHash("sha256").update(e).digest("hex");
  });
  let k = 0;
  const hashUs = time(() => {
    const e = sample[k++ % sample.length] as StoredEvent;
    storedEventHash(e, e.seq);
  });
  let r = 0;
  const rowUs = time(() => {
    const e = streamed[r++ % streamed.length] as StreamedEvent;
    e.hashAt(e.seq);
  });
  const perSecond = (us: number) => fmt.int(1_000_000 / us);
  return [
    ["step (in memory, no database)", "µs/event", "events/s alone"],
    [
      `canonical form (canonicalBytes), ${fmt.int(bytes / (unhashed.length + 2_000))} bytes/event`,
      canonicalUs.toFixed(2),
      perSecond(canonicalUs),
    ],
    ["canonical form, v1 writer (canonicalEvent, as UTF-8)", v1Us.toFixed(2), perSecond(v1Us)],
    ["SHA-256 of the canonical bytes (hex digest)", shaUs.toFixed(2), perSecond(shaUs)],
    ["storedEventHash (an event read through the driver: v1 writer and SHA-256)", hashUs.toFixed(2), perSecond(hashUs)],
    ["StreamedEvent.hashAt (a streamed row's columns: as verifyChains hashes)", rowUs.toFixed(2), perSecond(rowUs)],
    [`events timed`, fmt.int(unhashed.length), ""],
  ];
}

async function createTenants(db: Database, count: number, concurrency: number): Promise<string[]> {
  const keyRing = createTestKeyRing(db);
  await keyRing.ensurePlatformKey();
  const audit = createAudit({ db, keyRing, clock: systemClock });
  const ids: string[] = [];
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const n = next++;
      const tenant = await createTenant(db, systemClock, { slug: `bench-${n}`, name: `Bench ${n}` }, keyRing, audit);
      ids.push(tenant.id);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return ids;
}

/** Runs every audit workload on the PostgreSQL server at `s.adminUrl`; returns the report. */
export async function runAuditBench(s: AuditBenchSettings): Promise<string> {
  const unreachable = await postgresReachable(s.adminUrl);
  if (unreachable) return `audit: skipped, ${s.adminUrl} is not reachable (${unreachable})`;
  const target = { kind: "postgres", adminUrl: s.adminUrl, database: DATABASE } as const;
  const began = performance.now();
  try {
    console.log(`\naudit: creating ${DATABASE} and ${fmt.int(s.tenants)} tenants…`);
    await createBenchDatabase(target, baselineStatements());
    const serving = await openBenchServing(target, { poolSize: s.concurrency });
    try {
      const db = serving.db;
      const audit = createAudit({ db, keyRing: createTestKeyRing(db), clock: systemClock });
      const setupStart = performance.now();
      const tenants = await createTenants(db, s.tenants, s.concurrency);
      const setup = `${fmt.int(tenants.length)} tenants created in ${fmt.seconds(performance.now() - setupStart)}`;
      console.log(`  ${setup}`);
      const loadBefore = loadavg()[0] ?? 0;

      const many: AppendWorkload = {
        name: `audit appends: ${fmt.int(tenants.length)} chains, batches of ${BATCH}`,
        tenants,
        variants: ["plain", "chained", "audit", "batched"],
        batch: BATCH,
        target: APPEND_TARGET,
      };
      const one: AppendWorkload = {
        variants: ["plain", "chained", "audit"],
        name: "audit appends: one chain",
        tenants: tenants.slice(0, 1),
        batch: 1,
        target: null,
      };
      const manyResults = await runAppends(serving, audit, many, s);
      const oneResults = await runAppends(serving, audit, one, s);

      console.log(
        `  filling the log to ${fmt.int(s.verifyEvents)} events (audit.recordMany, batches of ${FILL_BATCH})…`,
      );
      const filled = await fill(db, audit, tenants, s.verifyEvents, s.concurrency);
      const filledLine =
        `filled to ${fmt.int(filled.events)} events in ${filled.seconds.toFixed(1)} s ` +
        `with audit.recordMany in batches of ${FILL_BATCH}`;
      console.log(`  ${filledLine}`);
      await settleBenchDatabase(target);
      const verifyResults = await runVerify(serving, s);
      const breakdown = await profile(db);
      const loadAfter = loadavg()[0] ?? 0;

      const header = [
        "workload",
        "variant",
        "events",
        "seconds",
        "events/s",
        "per round",
        "CPU µs node",
        "CPU µs db",
        "target",
        "ratio",
        "verdict",
      ];
      const rows = [
        header,
        ...resultRows(many.name, manyResults, VARIANTS, APPEND_TARGET, "batched"),
        ...resultRows(one.name, oneResults, VARIANTS, null, "audit"),
        ...resultRows(
          "audit verify",
          verifyResults,
          { verify: "(c) verifyChains", read: "(b) same reads, no hashing" },
          VERIFY_TARGET,
          "verify",
        ),
      ];
      const ratios = [
        ["workload", "ratio", "median (per round)"],
        [many.name, "(d)/(a) audit.recordMany over plain INSERT", ratio(manyResults, "batched", "plain")],
        [many.name, "(d)/(c) audit.recordMany over audit.record", ratio(manyResults, "batched", "audit")],
        [many.name, "(c)/(a) audit.record over plain INSERT", ratio(manyResults, "audit", "plain")],
        [many.name, "(c)/(b) audit.record over chain SQL", ratio(manyResults, "audit", "chained")],
        [one.name, "(c)/(a)", ratio(oneResults, "audit", "plain")],
        [one.name, "(c)/(b)", ratio(oneResults, "audit", "chained")],
        ["audit verify", "(c)/(b) verifyChains over reads alone", ratio(verifyResults, "verify", "read")],
      ];
      const readUs = 1_000_000 / rate(verifyResults.read);
      const verifyUs = 1_000_000 / rate(verifyResults.verify);
      return [
        `audit (PostgreSQL) — ${setup}; ${filledLine}`,
        `${s.rounds} rounds × ${s.seconds} s per append variant (order rotating, 1 s warm-up each); ` +
          `${s.concurrency} transactions in flight on a pool of ${s.concurrency}; ` +
          `1-minute load average ${loadBefore.toFixed(1)} before, ${loadAfter.toFixed(1)} after; ` +
          `whole audit bench ${fmt.seconds(performance.now() - began)}`,
        table(rows),
        "  events/s: all rounds' events over all rounds' seconds; the target applies to (d) (batches) and to",
        "  verifyChains; one chain is for scale. CPU: medians over",
        "  rounds of this process's and the PostgreSQL backends' CPU time per event (2 CPUs are shared by both).",
        "",
        table(ratios),
        "",
        "  where verification's time goes, per event:",
        `    verifyChains ${verifyUs.toFixed(2)} µs = reads and row parsing ${readUs.toFixed(2)} µs ` +
          `+ hashing and checks ${(verifyUs - readUs).toFixed(2)} µs`,
        table(breakdown)
          .split("\n")
          .map((l) => `    ${l}`)
          .join("\n"),
      ].join("\n");
    } finally {
      await serving.close();
    }
  } finally {
    await dropBenchDatabase(target);
  }
}
