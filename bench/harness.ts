import { type ChildProcess, fork } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import autocannon from "autocannon";
import type { BenchServing, BenchTarget } from "../src/platform/db/bench-support.ts";

/** One load run against one route family: completed requests per second and latency percentiles (ms). */
export interface Sample {
  rps: number;
  p50: number;
  p99: number;
  /** Answers that were not 2xx, plus socket errors and timeouts: a valid run has none. */
  failures: number;
  /** CPU µs per request in the load generator (this process), the server process, and the PostgreSQL backends. */
  clientCpu: number;
  serverCpu: number;
  databaseCpu: number | null;
}

/** What the server reports on "cpu": its own CPU time and its PostgreSQL backends', in µs. */
interface CpuReading {
  server: number;
  backends: Record<number, number> | null;
}

/** Drives `connections` keep-alive connections for `seconds`, each request's path from `nextPath`. */
export async function measure(
  server: BenchServer,
  nextPath: () => string,
  options: { seconds: number; connections: number },
): Promise<Sample> {
  const before = await server.cpu();
  const clientBefore = process.cpuUsage();
  // autocannon's own histogram keeps whole milliseconds; the response times it reports are exact.
  const times: number[] = [];
  const result = await new Promise<autocannon.Result>((resolve, reject) => {
    const instance = autocannon(
      {
        url: server.url,
        connections: options.connections,
        duration: options.seconds,
        requests: [{ method: "GET", setupRequest: (request) => ({ ...request, path: nextPath() }) }],
      },
      (error, done) => (error ? reject(error) : resolve(done)),
    );
    instance.on("response", (_client, status, _bytes, ms) => {
      if (status >= 200 && status < 300) times.push(ms);
    });
  });
  const client = process.cpuUsage(clientBefore);
  const after = await server.cpu();
  times.sort((x, y) => x - y);
  const percentile = (p: number) => times[Math.min(times.length - 1, Math.floor((p / 100) * times.length))] ?? 0;
  const requests = Math.max(1, result.requests.total);
  const backendTime = after.backends ? backendsCpuSince(before.backends ?? {}, after.backends) : null;
  return {
    rps: result.requests.total / result.duration,
    p50: percentile(50),
    p99: percentile(99),
    failures: result.non2xx + result.errors + result.timeouts,
    clientCpu: (client.user + client.system) / requests,
    serverCpu: (after.server - before.server) / requests,
    databaseCpu: backendTime === null ? null : backendTime / requests,
  };
}

export function median(values: number[]): number {
  const sorted = [...values].sort((x, y) => x - y);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1
    ? (sorted[mid] as number)
    : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

export interface BenchServer {
  url: string;
  cpu(): Promise<CpuReading>;
  stop(): Promise<void>;
}

function exited(child: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve(child.exitCode);
    else child.once("exit", (code) => resolve(code));
  });
}

/** Starts bench/server.ts in a child process on `target` and waits until it listens. */
export async function startServer(target: BenchTarget, poolSize: number): Promise<BenchServer> {
  const child = fork(
    fileURLToPath(new URL("./server.ts", import.meta.url)),
    [JSON.stringify(target), String(poolSize)],
    {
      stdio: ["ignore", "inherit", "inherit", "ipc"],
    },
  );
  const message = await new Promise<{ url?: string; error?: string }>((resolve) => {
    child.once("message", (m) => resolve(m as { url?: string; error?: string }));
    child.once("exit", (code) => resolve({ error: `the server exited with code ${code} before listening` }));
  });
  if (!message.url) {
    child.kill();
    throw new Error(`the benchmark server did not start: ${message.error}`);
  }
  return {
    url: message.url,
    cpu: () =>
      new Promise((resolve) => {
        const onMessage = (m: unknown) => {
          const reading = (m as { cpu?: CpuReading }).cpu;
          if (!reading) return;
          child.off("message", onMessage);
          resolve(reading);
        };
        child.on("message", onMessage);
        child.send("cpu");
      }),
    async stop() {
      if (child.connected) child.send("stop");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited(child);
      clearTimeout(timer);
    },
  };
}

/** A plain text table: the first row is the header; numbers are right-aligned. */
export function table(rows: string[][]): string {
  const widths = rows[0]?.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? "").length))) ?? [];
  const numeric = (s: string) => /^[\d.,×x%-]+$/.test(s) && /\d/.test(s);
  const line = (r: string[]) =>
    r
      .map((cell, c) => (numeric(cell) ? cell.padStart(widths[c] ?? 0) : cell.padEnd(widths[c] ?? 0)))
      .join("  ")
      .trimEnd();
  const [header, ...body] = rows;
  return [line(header ?? []), widths.map((w) => "-".repeat(w)).join("  "), ...body.map(line)].join("\n");
}

export const fmt = {
  int: (n: number) => Math.round(n).toLocaleString("en-US"),
  ms: (n: number) => n.toFixed(n < 10 ? 2 : 1),
  ratio: (n: number) => n.toFixed(3),
  seconds: (ms: number) => `${(ms / 1000).toFixed(1)} s`,
};

/** CPU time of a process in µs from /proc (Linux), if it is a PostgreSQL process on this machine. */
function postgresCpu(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    if (!stat.includes("(postgres)")) return undefined;
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // utime and stime, in clock ticks of 10 ms (USER_HZ is 100 in /proc).
    return (Number(fields[11]) + Number(fields[12])) * 10_000;
  } catch {
    return undefined;
  }
}

/**
 * CPU time used so far by each PostgreSQL backend serving this database, in µs by pid, when they run on
 * this machine; null otherwise (and on PGlite, where the database runs inside the serving process).
 */
export async function backendsCpu(serving: BenchServing): Promise<Record<number, number> | null> {
  if (serving.kind === "pglite") return null;
  const rows = await serving.superuserQuery<{ pid: number }>(
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
  );
  const backends: Record<number, number> = {};
  for (const { pid } of rows) {
    const cpu = postgresCpu(pid);
    if (cpu === undefined) return null;
    backends[pid] = cpu;
  }
  return backends;
}

/** CPU µs the backends used between two readings; one that went away in between was idle (pools close only idle ones). */
function backendsCpuSince(before: Record<number, number> | null, after: Record<number, number> | null): number | null {
  if (before === null || after === null) return null;
  return Object.entries(after).reduce((sum, [pid, t]) => sum + t - (before[Number(pid)] ?? 0), 0);
}

/** What `measureCpu` found: how many operations `work` did, in how long, and their CPU cost each. */
export interface CpuSample {
  count: number;
  seconds: number;
  /** CPU µs per operation in this process, and in the PostgreSQL backends (null when not measurable). */
  nodeCpu: number;
  dbCpu: number | null;
}

/** Runs `work` (which returns how many operations it did) and measures its time and CPU. */
export async function measureCpu(serving: BenchServing, work: () => Promise<number>): Promise<CpuSample> {
  const dbBefore = await backendsCpu(serving);
  const nodeBefore = process.cpuUsage();
  const start = performance.now();
  const count = await work();
  const seconds = (performance.now() - start) / 1000;
  const node = process.cpuUsage(nodeBefore);
  const db = backendsCpuSince(dbBefore, await backendsCpu(serving));
  const per = Math.max(1, count);
  return { count, seconds, nodeCpu: (node.user + node.system) / per, dbCpu: db === null ? null : db / per };
}
