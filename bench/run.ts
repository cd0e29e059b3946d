import { mkdtempSync, rmSync } from "node:fs";
import { availableParallelism, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import {
  type BenchTarget,
  createBenchDatabase,
  dropBenchDatabase,
  postgresReachable,
} from "../src/platform/db/bench-support.ts";
import { BrokenChain, runAuditBench } from "./audit.ts";
import { type BenchServer, fmt, measure, median, type Sample, startServer, table } from "./harness.ts";
import {
  type Dataset,
  datasetStatements,
  type Operation,
  pathsFor,
  prng,
  SEED_STATEMENT,
  sampleLooksRight,
  samplePaths,
  type VariantKey,
} from "./tenant-reads.ts";
import { runTenantRequestsBench } from "./tenant-requests.ts";

/**
 * `npm run bench [-- tenant-reads|audit …]`: the named benchmarks, all of them when none is named.
 *
 * tenant-reads: tenant reads under row-level security, through selectAsTenant (c) and through withTenant
 * (b), against the same query run bare as a superuser (a), measured in turn in one run on each database,
 * with the ratios (c)/(a) (the target) and (b)/(a).
 * tenant-requests: an authenticated tenant route beside a route that needs only a session, through the identity
 * module, on PostgreSQL (bench/tenant-requests.ts).
 * audit: audit log appends and verification on PostgreSQL, beside their baselines (bench/audit.ts).
 * See bench/README.md.
 * Knobs: BENCH_SECONDS, BENCH_ROUNDS, BENCH_WARMUP_SECONDS, BENCH_CONNECTIONS, BENCH_POOL_SIZE,
 * BENCH_DB (pglite|postgres|both), BENCH_DATABASE_URL (a superuser URL; the benchmarks create their databases),
 * and BENCH_AUDIT_* (bench/README.md).
 * It exits 0 whatever the numbers are; 1 only when the variants answer differently, when an audit chain
 * does not verify, or when it cannot run.
 */

function knob(name: string, fallback: number): number {
  const text = process.env[name]?.trim();
  if (!text) return fallback;
  const n = Number(text);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${name} must be a positive number, got "${text}"`);
  return n;
}

const settings = {
  seconds: knob("BENCH_SECONDS", 5),
  rounds: Math.round(knob("BENCH_ROUNDS", 3)),
  warmup: knob("BENCH_WARMUP_SECONDS", 2),
  connections: Math.round(knob("BENCH_CONNECTIONS", 10)),
  poolSize: Math.round(knob("BENCH_POOL_SIZE", 10)),
  adminUrl: process.env.BENCH_DATABASE_URL?.trim() || "postgres://postgres@127.0.0.1:5432/postgres",
  databases: (process.env.BENCH_DB?.trim() || "both") as "pglite" | "postgres" | "both",
};
if (!["pglite", "postgres", "both"].includes(settings.databases)) {
  throw new Error(`BENCH_DB must be pglite, postgres or both, got "${settings.databases}"`);
}

const DATASET: Dataset = { tenants: 1000, rowsPerTenant: 1000 };
/** On PostgreSQL (c) must keep at least this share of (a)'s throughput, for list and for get. */
const POSTGRES_TARGET = 0.85;
const OPERATIONS: Operation[] = ["list", "get"];
const VARIANTS: Record<VariantKey, string> = {
  a: "(a) superuser, bare query",
  b: "(b) withTenant + RLS",
  c: "(c) selectAsTenant + RLS",
};
const KEYS = Object.keys(VARIANTS) as VariantKey[];

class RowsDiffer extends Error {
  override name = "RowsDiffer";
}

async function fetchSample(url: string, path: string): Promise<{ status: number; body: unknown }> {
  const response = await fetch(url + path);
  return { status: response.status, body: await response.json() };
}

/** Before any measurement: every variant must answer the sample requests with the same rows as (a). */
async function verify(server: BenchServer, dataset: Dataset): Promise<number> {
  const problems: string[] = [];
  const samples = samplePaths(dataset);
  for (const sample of samples) {
    const a = await fetchSample(server.url, sample.path("a"));
    if (!sampleLooksRight(sample.expect, a.status, a.body)) {
      problems.push(`${sample.path("a")}: expected ${sample.expect}, got ${a.status} ${JSON.stringify(a.body)}`);
      continue;
    }
    for (const v of KEYS.filter((k) => k !== "a")) {
      const other = await fetchSample(server.url, sample.path(v));
      if (a.status !== other.status || (a.status === 200 && JSON.stringify(a.body) !== JSON.stringify(other.body))) {
        problems.push(`${sample.path(v)}: (${v}) answered ${other.status} with rows different from (a)`);
      }
    }
  }
  if (problems.length > 0) throw new RowsDiffer(`the variants answer differently:\n  ${problems.join("\n  ")}`);
  return samples.length;
}

type Results = Record<Operation, Record<VariantKey, Sample[]>>;

async function runRounds(server: BenchServer, dataset: Dataset): Promise<Results> {
  const load = { seconds: settings.seconds, connections: settings.connections };
  for (const op of OPERATIONS) {
    for (const v of KEYS) {
      await measure(server, pathsFor(dataset, op, v, prng(1)), { ...load, seconds: settings.warmup });
    }
  }
  const results: Results = { list: { a: [], b: [], c: [] }, get: { a: [], b: [], c: [] } };
  for (let round = 0; round < settings.rounds; round++) {
    for (const op of OPERATIONS) {
      // Rotate which variant goes first, so drift within a round does not favour one of them.
      const order = KEYS.map((_, i) => KEYS[(i + round) % KEYS.length] as VariantKey);
      for (const v of order) {
        // The same seed for both variants of a round: they draw the same tenants and rows.
        const sample = await measure(server, pathsFor(dataset, op, v, prng(1000 + round)), load);
        results[op][v].push(sample);
        process.stdout.write(
          `  round ${round + 1} ${op.padEnd(4)} ${v}: ${fmt.int(sample.rps)} req/s, p50 ${fmt.ms(sample.p50)} ms, ` +
            `p99 ${fmt.ms(sample.p99)} ms, CPU µs/req server ${fmt.int(sample.serverCpu)}` +
            (sample.databaseCpu === null ? "\n" : ` db ${fmt.int(sample.databaseCpu)}\n`),
        );
      }
    }
  }
  return results;
}

/** CPU µs per request of the whole system under test: load generator, server, and database when measurable. */
function totalCpu(kind: BenchTarget["kind"], x: Sample): number | null {
  if (kind === "pglite") return x.clientCpu + x.serverCpu;
  return x.databaseCpu === null ? null : x.clientCpu + x.serverCpu + x.databaseCpu;
}

/** Per round, (v) against (a): throughput ratio, and CPU per request of (a) over (v) when measurable. */
function perRound(kind: BenchTarget["kind"], a: Sample[], v: Sample[]): { rps: number[]; cpu: number[] | null } {
  const cpu = a.map((x, i) => {
    const ta = totalCpu(kind, x);
    const tv = v[i] ? totalCpu(kind, v[i]) : null;
    return ta === null || tv === null ? null : ta / tv;
  });
  return {
    rps: a.map((x, i) => (v[i]?.rps ?? 0) / x.rps),
    cpu: cpu.every((r) => r !== null) ? (cpu as number[]) : null,
  };
}

function report(kind: BenchTarget["kind"], results: Results): string {
  const dbColumn = kind === "pglite" ? "(in server)" : "db";
  const rows: string[][] = [
    ["operation", "variant", "req/s", "p50 ms", "p99 ms", "CPU µs/req: client", "server", dbColumn, "total"],
  ];
  const ratios: string[][] = [["operation", "ratio", "req/s", "per round", "target", "CPU (a)/(x)", "per round"]];
  const notes: string[] = [];
  const cpuCell = (values: (number | null)[]) =>
    values.every((v) => v !== null) ? fmt.int(median(values as number[])) : "-";
  for (const op of OPERATIONS) {
    for (const v of KEYS) {
      const s = results[op][v];
      rows.push([
        op,
        VARIANTS[v],
        fmt.int(median(s.map((x) => x.rps))),
        fmt.ms(median(s.map((x) => x.p50))),
        fmt.ms(median(s.map((x) => x.p99))),
        fmt.int(median(s.map((x) => x.clientCpu))),
        fmt.int(median(s.map((x) => x.serverCpu))),
        kind === "pglite" ? "" : cpuCell(s.map((x) => x.databaseCpu)),
        cpuCell(s.map((x) => totalCpu(kind, x))),
      ]);
      const failures = s.reduce((n, x) => n + x.failures, 0);
      if (failures > 0) notes.push(`${op} ${v}: ${failures} requests failed (non-2xx, errors or timeouts)`);
    }
    for (const v of ["c", "b"] as const) {
      const round = perRound(kind, results[op].a, results[op][v]);
      const ratio = median(round.rps);
      const verdict =
        v === "b"
          ? "information"
          : kind === "postgres"
            ? `≥ ${POSTGRES_TARGET.toFixed(2)} ${ratio >= POSTGRES_TARGET ? "PASS" : "MISS"}`
            : "none (report only)";
      ratios.push([
        op,
        `(${v})/(a)`,
        fmt.ratio(ratio),
        round.rps.map(fmt.ratio).join(" "),
        verdict,
        round.cpu ? fmt.ratio(median(round.cpu)) : "-",
        round.cpu ? round.cpu.map(fmt.ratio).join(" ") : "",
      ]);
    }
  }
  return [
    table(rows),
    "",
    table(ratios),
    "  req/s: median of the per-round throughput ratios; the target applies to (c)/(a).",
    "  CPU (a)/(x): total CPU per request of (a) over the variant's, what the throughput ratio tends to when the",
    "  machine's CPUs are the bottleneck; it is steadier than req/s when other work shares the machine.",
    ...notes.map((n) => `  ! ${n}`),
  ].join("\n");
}

async function benchOne(kind: BenchTarget["kind"]): Promise<string> {
  let target: BenchTarget;
  let cleanup: () => Promise<void>;
  if (kind === "postgres") {
    const unreachable = await postgresReachable(settings.adminUrl);
    if (unreachable) return `PostgreSQL: skipped, ${settings.adminUrl} is not reachable (${unreachable})`;
    const pgTarget = { kind, adminUrl: settings.adminUrl, database: "charter_bench" } as const;
    target = pgTarget;
    cleanup = () => dropBenchDatabase(pgTarget);
  } else {
    const dataDir = mkdtempSync(join(tmpdir(), "charter-bench-"));
    target = { kind, dataDir };
    cleanup = async () => rmSync(dataDir, { recursive: true, force: true });
  }
  const name = kind === "postgres" ? "PostgreSQL" : "PGlite";
  const dataset = DATASET;
  try {
    console.log(`\n${name}: creating and seeding ${fmt.int(dataset.tenants * dataset.rowsPerTenant)} rows…`);
    const start = performance.now();
    const times = await createBenchDatabase(target, datasetStatements(dataset));
    const total = performance.now() - start;
    const seeded =
      `${fmt.int(dataset.tenants)} tenants × ${fmt.int(dataset.rowsPerTenant)} rows = ` +
      `${fmt.int(dataset.tenants * dataset.rowsPerTenant)} rows; seed INSERT ${fmt.seconds(times[SEED_STATEMENT] ?? 0)}, ` +
      `database ready in ${fmt.seconds(total)} (migrations, keys, indexes, RLS, VACUUM ANALYZE)`;
    console.log(`  ${seeded}`);
    const server = await startServer(target, settings.poolSize);
    try {
      const checked = await verify(server, dataset);
      console.log(`  ${checked} sample requests: (a), (b) and (c) return the same rows`);
      const loadBefore = loadavg()[0] ?? 0;
      const results = await runRounds(server, dataset);
      const load = `1-minute load average ${loadBefore.toFixed(1)} before the rounds, ${(loadavg()[0] ?? 0).toFixed(1)} after`;
      return `${name} — ${seeded}\n${load}\n${report(kind, results)}`;
    } finally {
      await server.stop();
    }
  } finally {
    await cleanup();
  }
}

async function tenantReads(): Promise<string> {
  const kinds: BenchTarget["kind"][] = settings.databases === "both" ? ["postgres", "pglite"] : [settings.databases];
  console.log(
    `tenant reads: ${settings.rounds} rounds × ${settings.seconds} s per variant and operation, in rotating order, ` +
      `after ${settings.warmup} s warm-up each; ${settings.connections} connections; pool ${settings.poolSize}; ` +
      `node ${process.version}, ${availableParallelism()} CPUs; server in a child process`,
  );
  const reports: string[] = [];
  for (const kind of kinds) reports.push(await benchOne(kind));
  return reports.join("\n\n");
}

function audit(): Promise<string> {
  if (settings.databases === "pglite")
    return Promise.resolve("audit: skipped, it runs on PostgreSQL only (BENCH_DB=pglite)");
  return runAuditBench({
    adminUrl: settings.adminUrl,
    seconds: knob("BENCH_AUDIT_SECONDS", 3),
    rounds: Math.round(knob("BENCH_AUDIT_ROUNDS", 2)),
    concurrency: Math.round(knob("BENCH_AUDIT_CONCURRENCY", 16)),
    tenants: Math.round(knob("BENCH_AUDIT_TENANTS", 1000)),
    verifyEvents: Math.round(knob("BENCH_AUDIT_VERIFY_EVENTS", 200_000)),
  });
}

function tenantRequests(): Promise<string> {
  if (settings.databases === "pglite")
    return Promise.resolve("tenant requests: skipped, it runs on PostgreSQL only (BENCH_DB=pglite)");
  return runTenantRequestsBench({
    adminUrl: settings.adminUrl,
    rounds: settings.rounds,
    seconds: settings.seconds,
    concurrency: settings.connections,
  });
}

const BENCHMARKS: Record<string, () => Promise<string>> = {
  "tenant-reads": tenantReads,
  "tenant-requests": tenantRequests,
  audit,
};

async function main(): Promise<void> {
  const names = process.argv.slice(2);
  const unknown = names.filter((n) => !(n in BENCHMARKS));
  if (unknown.length > 0) {
    throw new Error(`unknown benchmark ${unknown.join(", ")}; known: ${Object.keys(BENCHMARKS).join(", ")}`);
  }
  const reports: string[] = [];
  for (const name of names.length > 0 ? names : Object.keys(BENCHMARKS)) {
    reports.push(await (BENCHMARKS[name] as () => Promise<string>)());
  }
  console.log(`\n${"=".repeat(100)}\n${reports.join("\n\n")}`);
}

main().catch((error: unknown) => {
  const known = error instanceof RowsDiffer || error instanceof BrokenChain;
  console.error(known ? `FAILED: ${(error as Error).message}` : error);
  process.exit(1);
});
