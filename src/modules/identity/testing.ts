import { randomBytes } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll } from "vitest";
import { openTestDatabase, type TestDatabase, type TestDatabaseKind } from "../../../test/support/databases.ts";
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
import { createTestTenant } from "../../platform/tenancy/testing.ts";
import type { DnsResolver, IdentityDeps } from "./deps.ts";
import { createIdentity, IDENTITY_TEMPLATES, type Identity } from "./index.ts";
import { addMembership } from "./memberships.ts";
import { createPasswordHasher } from "./passwords.ts";
import { DEFAULT_POLICY, type SecurityPolicy } from "./policy.ts";
import type { MembershipRole } from "./roles.ts";

/**
 * Test support for the identity module: its dependencies, users inserted directly, an app with the module's
 * routes and access control, a real sign-in, and useIdentityTestApp, which makes all of that once for a describe
 * block. Tests pass a manual clock so that timeouts can be crossed.
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

/** The kernel with the identity module's routes and access control, on the deps' clock and rate limiter. */
export function buildIdentityTestApp(deps: IdentityDeps, options: { routes?: TestRoutes } = {}): Promise<TestApp> {
  const identity = createIdentity(deps);
  return buildTestApp({
    db: deps.db,
    clock: deps.clock,
    rateLimiter: deps.rateLimiter,
    routes: options.routes ? options.routes(identity) : identity.routes,
    accessControl: identity.accessControl,
  });
}

/** What useIdentityTestApp prepares for the tests of a describe block. */
export interface IdentityTestWorld {
  /** The block's own migrated database. */
  readonly t: TestDatabase;
  readonly deps: IdentityDeps;
  readonly app: TestApp;
  /** A verified user (unless `verified: false`) with an address no other test uses, starting with `label`. */
  newUser(options?: {
    label?: string;
    displayName?: string;
    password?: string | null;
    verified?: boolean;
  }): Promise<TestUser>;
  /** A new active tenant without members, named `name`; answers its id. */
  newTenant(name?: string): Promise<string>;
  /** Makes the user a live member of the tenant with `role`; answers the membership's id. */
  addMember(tenantId: string, userId: string, role: MembershipRole): Promise<string>;
  /**
   * Gives the user a passkey row directly, for tests that need a second factor enrolled but never prove it (its
   * public key is random bytes: it verifies nothing).
   */
  addPasskey(userId: string): Promise<void>;
  /** Gives the tenant (which has none yet) a security policy: the defaults, changed by `policy`. */
  setPolicy(tenantId: string, policy: Partial<SecurityPolicy>): Promise<void>;
}

/**
 * The set-up most identity tests share, made once for the describe block that calls it (in its beforeAll, closed
 * in its afterAll): a database of `kind`, identity deps over it on `clock` (`options.deps` may change them: another
 * outbound client, a gated database), and an app serving the identity routes (or `options.routes`). Tests share
 * it, so each makes users and tenants of its own. The world's fields are there from the block's first hook on.
 */
export function useIdentityTestApp(
  kind: TestDatabaseKind,
  clock: Clock,
  options: {
    deps?: (base: IdentityDeps, t: TestDatabase) => IdentityDeps | Promise<IdentityDeps>;
    routes?: TestRoutes;
  } = {},
): IdentityTestWorld {
  let ready: { t: TestDatabase; deps: IdentityDeps; app: TestApp } | undefined;
  let opened: TestDatabase | undefined;
  let app: TestApp | undefined;
  beforeAll(async () => {
    opened = await openTestDatabase(kind);
    const base = createIdentityTestDeps(opened.db, clock);
    const deps = options.deps ? await options.deps(base, opened) : base;
    app = await buildIdentityTestApp(deps, { routes: options.routes });
    ready = { t: opened, deps, app };
  });
  afterAll(async () => {
    await app?.close();
    await opened?.close();
  });
  const world = () => {
    if (!ready) throw new Error("the identity test world is made in beforeAll: use it in hooks and tests only");
    return ready;
  };
  return {
    get t() {
      return world().t;
    },
    get deps() {
      return world().deps;
    },
    get app() {
      return world().app;
    },
    newUser: ({ label = "user", ...rest } = {}) =>
      createTestUser(world().deps, { email: `${label}-${uuidv7().slice(-12)}@example.test`, ...rest }),
    newTenant: async (name = "Acme") =>
      (await createTestTenant(world().t.db, { slug: `t-${uuidv7().slice(-12)}`, name }, clock)).id,
    addMember: (tenantId, userId, role) =>
      world().t.db.withTenant({ tenantId }, (tx) =>
        addMembership(tx, clock.now(), { tenantId, userId, role, invitedBy: null }),
      ),
    addPasskey: async (userId) => {
      await world().t.db.withPlatform((tx) =>
        tx
          .insertInto("passkeys")
          .values({
            id: uuidv7(),
            user_id: userId,
            credential_id: randomBytes(32),
            public_key: randomBytes(77),
            sign_count: 0,
            device_type: "singleDevice",
            backed_up: false,
            name: "Key",
            created_at: clock.now(),
          })
          .execute(),
      );
    },
    setPolicy: async (tenantId, policy) => {
      const set = { ...DEFAULT_POLICY, ...policy };
      await world().t.db.withTenant({ tenantId }, (tx) =>
        tx
          .insertInto("security_policies")
          .values({
            tenant_id: tenantId,
            id: uuidv7(),
            require_mfa: set.requireMfa,
            require_sso: set.requireSso,
            session_lifetime_minutes: set.sessionLifetimeMinutes,
            allowed_methods: [...set.allowedMethods],
            allow_personal_keys: set.allowPersonalKeys,
            allow_service_keys: set.allowServiceKeys,
            break_glass_membership_id: set.breakGlassMembershipId,
            updated_at: clock.now(),
          })
          .execute(),
      );
    },
  };
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
