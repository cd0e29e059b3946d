import { randomBytes } from "node:crypto";
import type { FastifyInstance } from "fastify";
import { loadConfig, type RateLimitConfig } from "../../config.ts";
import { type Clock, systemClock } from "../clock.ts";
import type { Database } from "../db/index.ts";
import { createRateLimiter, type RateLimiter } from "../ratelimit/limiter.ts";
import { type AccessControl, buildApp } from "./app.ts";
import { kernelRoutes } from "./kernel-routes.ts";
import type { AnyRoute } from "./routes.ts";

export interface TestApp {
  app: FastifyInstance;
  rateLimiter: RateLimiter;
  /** Closes the app, then flushes and stops the rate limiter; the database stays open. */
  close(): Promise<void>;
}

/**
 * The HTTP kernel as the server composes it (the given routes plus the kernel's own), for tests: logs off,
 * a rate limiter of its own (a fresh hash key, so its buckets never meet another test's) on `db`.
 */
export async function buildTestApp(options: {
  db: Database;
  routes?: AnyRoute[];
  accessControl?: AccessControl;
  rateLimit?: Partial<RateLimitConfig>;
  clock?: Clock;
  rateLimiter?: RateLimiter;
}): Promise<TestApp> {
  const clock = options.clock ?? systemClock;
  const base = loadConfig({});
  const config = { ...base, rateLimit: { ...base.rateLimit, ...options.rateLimit } };
  const rateLimiter = options.rateLimiter ?? createRateLimiter({ db: options.db, clock, hashKey: randomBytes(32) });
  let app: FastifyInstance | undefined;
  try {
    app = await buildApp({
      config,
      db: options.db,
      clock,
      rateLimiter,
      routes: [...(options.routes ?? []), ...kernelRoutes({ db: options.db, app: () => app as FastifyInstance })],
      ...(options.accessControl ? { accessControl: options.accessControl } : {}),
      log: false,
    });
  } catch (error) {
    await rateLimiter.close();
    throw error;
  }
  const built = app;
  return {
    app: built,
    rateLimiter,
    async close() {
      await built.close();
      await rateLimiter.close();
    },
  };
}
