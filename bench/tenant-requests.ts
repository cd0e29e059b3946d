import { randomBytes } from "node:crypto";
import { loadavg } from "node:os";
import { addMembership } from "../src/modules/identity/memberships.ts";
import {
  buildIdentityTestApp,
  createIdentityTestDeps,
  createTestUser,
  signIn,
} from "../src/modules/identity/test-deps.ts";
import { systemClock } from "../src/platform/clock.ts";
import {
  createBenchDatabase,
  dropBenchDatabase,
  openBenchServing,
  postgresReachable,
} from "../src/platform/db/bench-support.ts";
import { createTestTenant } from "../src/platform/tenancy/testing.ts";
import { type CpuSample, fmt, measureCpu, median, table } from "./harness.ts";

/**
 * Authenticated requests on PostgreSQL, through the real identity module (session cookie, access control,
 * tenant security policy) and Fastify's inject (no network: the server's own cost): (a) a route that only needs
 * a session, `GET /api/v1/sessions/current`, beside (b) a tenant route, `GET /api/v1/tenants/{id}`, whose
 * tenant check adds the tenant row, the feature switch, the membership and the tenant's security policy
 * before the handler reads the tenant. (b)/(a) is the price of a tenant request over a signed-in one. It
 * reports; it has no target. See bench/README.md.
 */

export interface TenantRequestsSettings {
  adminUrl: string;
  rounds: number;
  seconds: number;
  /** Requests in flight at once. */
  concurrency: number;
}

const DATABASE = "charter_bench_requests";
const VARIANTS = { session: "(a) session route", tenant: "(b) tenant route" } as const;
type Variant = keyof typeof VARIANTS;

/** Keeps `concurrency` requests in flight for `seconds`; counts those answered 200, fails on any other answer. */
async function drive(send: () => Promise<number>, seconds: number, concurrency: number): Promise<number> {
  const until = performance.now() + seconds * 1000;
  let done = 0;
  const loop = async () => {
    while (performance.now() < until) {
      const status = await send();
      if (status !== 200) throw new Error(`a benchmark request was answered ${status}`);
      done += 1;
    }
  };
  await Promise.all(Array.from({ length: concurrency }, loop));
  return done;
}

export async function runTenantRequestsBench(s: TenantRequestsSettings): Promise<string> {
  const unreachable = await postgresReachable(s.adminUrl);
  if (unreachable) return `tenant requests: skipped, ${s.adminUrl} is not reachable (${unreachable})`;
  const target = { kind: "postgres", adminUrl: s.adminUrl, database: DATABASE } as const;
  await createBenchDatabase(target, []);
  const serving = await openBenchServing(target, { poolSize: s.concurrency });
  const deps = createIdentityTestDeps(serving.db, systemClock);
  // One client, as a browser or an integration is: the per-address limit lifted so that it never refuses.
  const app = await buildIdentityTestApp(deps, { rateLimit: { perAddress: 1_000_000_000 } });
  try {
    const tenantId = (await createTestTenant(serving.db, { slug: "bench-requests", name: "Bench" })).id;
    const user = await createTestUser(deps, { email: `bench-${randomBytes(4).toString("hex")}@example.test` });
    await serving.db.withTenant({ tenantId }, (tx) =>
      addMembership(tx, systemClock.now(), { tenantId, userId: user.id, role: "member", invitedBy: null }),
    );
    const { cookie } = await signIn(app, user.email, user.password);
    const urls: Record<Variant, string> = {
      session: "/api/v1/sessions/current",
      tenant: `/api/v1/tenants/${tenantId}`,
    };
    const send = (v: Variant) => async () =>
      (await app.app.inject({ method: "GET", url: urls[v], headers: { cookie }, remoteAddress: "10.0.0.1" }))
        .statusCode;

    const loadBefore = loadavg()[0] ?? 0;
    const keys = Object.keys(VARIANTS) as Variant[];
    const results: Record<Variant, CpuSample[]> = { session: [], tenant: [] };
    for (const v of keys) await drive(send(v), 1, s.concurrency);
    for (let round = 0; round < s.rounds; round++) {
      for (const v of round % 2 === 0 ? keys : [...keys].reverse()) {
        results[v].push(await measureCpu(serving, () => drive(send(v), s.seconds, s.concurrency)));
      }
    }
    const rate = (x: CpuSample) => x.count / x.seconds;
    const rows = keys.map((v) => {
      const samples = results[v];
      const db = samples.map((x) => x.dbCpu);
      return [
        VARIANTS[v],
        fmt.int(median(samples.map(rate))),
        (1e6 / median(samples.map(rate))).toFixed(0),
        median(samples.map((x) => x.nodeCpu)).toFixed(0),
        db.includes(null) ? "-" : median(db as number[]).toFixed(0),
      ];
    });
    const perRound = results.tenant.map((x, i) => rate(x) / rate(results.session[i] as CpuSample));
    return [
      `tenant requests (PostgreSQL, inject, ${s.concurrency} in flight) — ${s.rounds} rounds × ${s.seconds} s per variant, ` +
        `order alternating; 1-minute load average ${loadBefore.toFixed(1)} before, ${(loadavg()[0] ?? 0).toFixed(1)} after`,
      table([["variant", "req/s", "µs/req", "CPU µs node", "CPU µs db"], ...rows]),
      `(b)/(a) req/s, median (per round): ${fmt.ratio(median(perRound))} (${perRound.map(fmt.ratio).join(" ")})`,
    ].join("\n");
  } finally {
    await app.close();
    await serving.close();
    await dropBenchDatabase(target);
  }
}
