import { randomBytes } from "node:crypto";
import { afterAll, beforeAll } from "vitest";
import { openTestDatabase, type TestDatabase, type TestDatabaseKind } from "../../../test/support/databases.ts";
import type { Clock } from "../../platform/clock.ts";
import type { TestApp } from "../../platform/http/test-app.ts";
import { uuidv7 } from "../../platform/ids.ts";
import { createTestTenant } from "../../platform/tenancy/testing.ts";
import type { IdentityDeps } from "./deps.ts";
import { addMembership } from "./memberships.ts";
import { DEFAULT_POLICY, type SecurityPolicy } from "./policy.ts";
import type { MembershipRole } from "./roles.ts";
import {
  buildIdentityTestApp,
  createIdentityTestDeps,
  createTestUser,
  type TestRoutes,
  type TestUser,
} from "./test-deps.ts";

/**
 * Test support for the identity module: useIdentityTestApp, which makes a database, the module's dependencies
 * and an app once for a describe block, and (from test-deps.ts, which needs no test runner) the dependencies,
 * users inserted directly, the app and a real sign-in. Tests pass a manual clock so that timeouts can be crossed.
 */

export * from "./test-deps.ts";

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
