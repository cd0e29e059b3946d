import { randomBytes } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { RateLimitConfig } from "../../config.ts";
import { createTestAudit } from "../../platform/audit/testing.ts";
import type { Clock } from "../../platform/clock.ts";
import { blindIndex, normaliseEmail } from "../../platform/crypto/blind-index.ts";
import { createTestKeyRing } from "../../platform/crypto/testing.ts";
import type { Database } from "../../platform/db/index.ts";
import { createFileStore, createLocalBlobStore } from "../../platform/files/index.ts";
import type { AnyRoute } from "../../platform/http/routes.ts";
import { buildTestApp, type TestApp } from "../../platform/http/test-app.ts";
import { uuidv7 } from "../../platform/ids.ts";
import { createMailer, createTemplateRegistry, PLATFORM_TEMPLATES } from "../../platform/mail/index.ts";
import { createOutboundClient } from "../../platform/net/index.ts";
import { createRateLimiter } from "../../platform/ratelimit/limiter.ts";
import type { DnsResolver, IdentityDeps } from "./deps.ts";
import { createIdentity, IDENTITY_TEMPLATES, type Identity } from "./index.ts";
import { createPasswordHasher } from "./passwords.ts";

/**
 * Test support for the identity module that needs no test runner (tests and benchmarks use it): its
 * dependencies, users inserted directly, an app with the module's routes and access control, a real sign-in.
 */

/** The public URL of test deployments: https, so the session cookie is the `__Host-` one. */
export const TEST_PUBLIC_URL = new URL("https://charter.test");

/** A password that passes the strength check, used when a test does not care which. */
export const TEST_PASSWORD = "correct horse battery staple 42";

/**
 * Identity dependencies over `db`: a test key ring and audit log, a mailer in outbox mode (read mail with
 * `deps.mailer.outbox()`), a rate limiter of its own, Argon2id with cheap parameters so tests run fast, and a
 * file store over a blob directory of its own under the system's temporary directory.
 * Close `deps.rateLimiter` when done (an app built with buildIdentityTestApp closes it with the app).
 */
export function createIdentityTestDeps(db: Database, clock: Clock): IdentityDeps {
  const keyRing = createTestKeyRing(db, clock);
  return {
    db,
    clock,
    keyRing,
    audit: createTestAudit(db, keyRing, clock),
    mailer: createMailer({
      db,
      keyRing,
      clock,
      templates: createTemplateRegistry([...PLATFORM_TEMPLATES, ...IDENTITY_TEMPLATES]),
    }),
    rateLimiter: createRateLimiter({ db, clock, hashKey: randomBytes(32) }),
    passwords: createPasswordHasher({ memoryCost: 1024, timeCost: 1, parallelism: 1 }),
    files: createFileStore({
      keyRing,
      clock,
      blobs: createLocalBlobStore(mkdtempSync(join(tmpdir(), "charter-identity-files-"))),
    }),
    config: { publicUrl: TEST_PUBLIC_URL },
    // Public addresses as in production, plus the loopback addresses a test's local identity provider listens on.
    outbound: createOutboundClient({ allowAddresses: ["127.0.0.1", "::1"] }),
    dns: createTestDns(),
  };
}

/** A DNS resolver answering TXT queries from `records` (name in lower case → its records); ENOTFOUND otherwise. */
export interface TestDns extends DnsResolver {
  records: Map<string, string[][]>;
}

export function createTestDns(): TestDns {
  const records = new Map<string, string[][]>();
  return {
    records,
    async resolveTxt(name) {
      const found = records.get(name.toLowerCase());
      if (found) return found;
      throw Object.assign(new Error(`queryTxt ENOTFOUND ${name}`), { code: "ENOTFOUND" });
    },
  };
}

export interface TestUser {
  id: string;
  email: string;
  password: string;
}

/**
 * Inserts a user row directly, as sign-up and verification would leave it (sealed address, blind index,
 * hashed password), without mail or audit. `verified` defaults to true; `password: null` makes an account
 * without a password.
 */
export async function createTestUser(
  deps: IdentityDeps,
  input: { email: string; displayName?: string; password?: string | null; verified?: boolean },
): Promise<TestUser> {
  const id = uuidv7();
  const email = normaliseEmail(input.email);
  const password = input.password === undefined ? TEST_PASSWORD : input.password;
  const passwordHash = password === null ? null : await deps.passwords.hash(password);
  const now = deps.clock.now();
  await deps.db.withPlatform(async (tx) => {
    const sealed = await deps.keyRing.encrypt(tx, { scope: "person", personId: id }, email, {
      tenantId: null,
      table: "users",
      column: "email",
      rowId: id,
    });
    await tx
      .insertInto("users")
      .values({
        id,
        email: sealed,
        email_index: blindIndex(deps.keyRing.blindIndexKey("platform"), "email", email),
        email_verified_at: input.verified === false ? null : now,
        display_name: input.displayName ?? email.split("@")[0] ?? "Test user",
        password_hash: passwordHash,
        password_changed_at: passwordHash === null ? null : now,
        created_at: now,
        updated_at: now,
      })
      .execute();
  });
  return { id, email, password: password ?? "" };
}

/** Which routes a test app serves, from the identity module's: all of them unless a test picks or adds. */
export type TestRoutes = (identity: Identity) => AnyRoute[];

/**
 * The kernel with the identity module's routes and access control, on the deps' clock and rate limiter;
 * `rateLimit` changes the configured request limits (a benchmark lifts the per-address one).
 */
export function buildIdentityTestApp(
  deps: IdentityDeps,
  options: { routes?: TestRoutes; rateLimit?: Partial<RateLimitConfig> } = {},
): Promise<TestApp> {
  const identity = createIdentity(deps);
  return buildTestApp({
    db: deps.db,
    clock: deps.clock,
    rateLimiter: deps.rateLimiter,
    routes: options.routes ? options.routes(identity) : identity.routes,
    accessControl: identity.accessControl,
    ...(options.rateLimit ? { rateLimit: options.rateLimit } : {}),
  });
}

/** Headers of a same-origin browser request carrying `cookie` (a `name=value` pair, as signIn returns). */
export function sessionHeaders(cookie: string): Record<string, string> {
  return { cookie, "sec-fetch-site": "same-origin" };
}

export interface SignedIn {
  /** The `Cookie` request header value that carries the session: `name=token`. */
  cookie: string;
  token: string;
  sessionId: string;
  expiresAt: string;
}

/** A random private source address, so that many sign-ins in one test file never meet the per-address limit. */
export function randomAddress(): string {
  const [a = 0, b = 0, c = 0] = randomBytes(3);
  return `10.${a}.${b}.${c}`;
}

/**
 * Signs in through the real route (POST /api/v1/sessions, same-origin, from a random source address unless
 * `remoteAddress` is given) and fails the test unless it works.
 */
export async function signIn(
  app: TestApp,
  email: string,
  password: string,
  options: { remoteAddress?: string; userAgent?: string } = {},
): Promise<SignedIn> {
  const response = await app.app.inject({
    method: "POST",
    url: "/api/v1/sessions",
    remoteAddress: options.remoteAddress ?? randomAddress(),
    headers: { "sec-fetch-site": "same-origin", ...(options.userAgent ? { "user-agent": options.userAgent } : {}) },
    payload: { email, password },
  });
  if (response.statusCode !== 200) {
    throw new Error(`sign-in failed with ${response.statusCode}: ${response.body}`);
  }
  const cookie = response.cookies[0];
  if (!cookie) throw new Error("sign-in set no cookie");
  const { session } = response.json() as { session: { id: string; expiresAt: string } };
  return {
    cookie: `${cookie.name}=${cookie.value}`,
    token: cookie.value,
    sessionId: session.id,
    expiresAt: session.expiresAt,
  };
}
