import { randomBytes } from "node:crypto";
import { systemClock } from "../src/platform/clock.ts";
import { type BenchServing, type BenchTarget, openBenchServing } from "../src/platform/db/bench-support.ts";
import { buildApp } from "../src/platform/http/app.ts";
import { createRateLimiter } from "../src/platform/ratelimit/limiter.ts";
import { backendsCpu } from "./harness.ts";
import { tenantReadRoutes } from "./tenant-reads.ts";

/**
 * The benchmark's server, run as a child of bench/run.ts so the load generator does not take its CPU.
 * argv[2] is the BenchTarget as JSON, argv[3] the pool size. It reports `{ url }` (or `{ error }`) over IPC,
 * answers "cpu" with the CPU time used so far, and stops when the parent sends "stop" or goes away.
 */

/**
 * CPU time used so far, in µs: this process, and each PostgreSQL backend serving this database by pid when
 * they run on this machine (null otherwise; on PGlite the database runs inside this process).
 */
async function cpuUsed(serving: BenchServing): Promise<{ server: number; backends: Record<number, number> | null }> {
  const own = process.cpuUsage();
  return { server: own.user + own.system, backends: await backendsCpu(serving) };
}

const send = (message: unknown) =>
  new Promise<void>((resolve) => (process.send ? process.send(message, () => resolve()) : resolve()));

async function main(): Promise<void> {
  const target = JSON.parse(process.argv[2] ?? "") as BenchTarget;
  const serving = await openBenchServing(target, { poolSize: Number(process.argv[3] ?? 10) });
  const rateLimiter = createRateLimiter({ db: serving.db, clock: systemClock, hashKey: randomBytes(32) });
  const app = await buildApp({
    config: {
      trustedProxies: [],
      logLevel: "silent",
      // Large enough never to refuse the benchmark's load; the limiter still counts every request.
      rateLimit: { perAddress: 10_000_000, windowSeconds: 60 },
      tls: undefined,
      publicUrl: new URL("http://127.0.0.1"),
    },
    db: serving.db,
    clock: systemClock,
    rateLimiter,
    routes: tenantReadRoutes(serving),
    log: false,
  });
  const url = await app.listen({ host: "127.0.0.1", port: 0 });
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await app.close();
    await rateLimiter.close();
    await serving.close();
    process.exit(0);
  };
  process.on("message", (message) => {
    if (message === "stop") void stop();
    if (message === "cpu") void cpuUsed(serving).then((cpu) => send({ cpu }));
  });
  process.on("disconnect", () => void stop());
  await send({ url });
}

main().catch(async (error: unknown) => {
  await send({ error: (error as Error).stack ?? String(error) });
  process.exit(1);
});
