import { randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import type { LightMyRequestResponse } from "fastify";
import { sql } from "kysely";
import { auditLogRoutes } from "../../src/modules/audit-log/index.ts";
import { createAuditLogTestDeps } from "../../src/modules/audit-log/testing.ts";
import { createApiKey } from "../../src/modules/identity/api-keys.ts";
import { setAvatar } from "../../src/modules/identity/avatars.ts";
import { sessionCookieName } from "../../src/modules/identity/cookies.ts";
import type { IdentityDeps } from "../../src/modules/identity/deps.ts";
import { createIdentity } from "../../src/modules/identity/index.ts";
import { createInvitation } from "../../src/modules/identity/invitations.ts";
import { addMembership } from "../../src/modules/identity/memberships.ts";
import type { ApiKeyRole, MembershipRole } from "../../src/modules/identity/roles.ts";
import { createSession, reauthenticate } from "../../src/modules/identity/sessions.ts";
import {
  addConfiguration,
  claimDomain,
  ssoFixtures,
  UNREACHABLE_ISSUER,
} from "../../src/modules/identity/sso-testing.ts";
import { setTenantSuspended } from "../../src/modules/identity/tenants.ts";
import { createTestUser, TEST_PASSWORD, TEST_PUBLIC_URL } from "../../src/modules/identity/testing.ts";
import { kernelRoutes } from "../../src/platform/http/kernel-routes.ts";
import type { AnyRoute } from "../../src/platform/http/routes.ts";
import { buildTestApp, type TestApp } from "../../src/platform/http/test-app.ts";
import { uuidv7 } from "../../src/platform/ids.ts";
import { createTenant, type Tenant } from "../../src/platform/tenancy/tenants.ts";

/**
 * The permission matrix harness (promise T3). The cases come from the route registry (the identity module's
 * routes and the kernel's), so a new route is in the matrix without anyone editing it; what each case must
 * answer comes from the test's hand-written tables, never from the code under test. Two tenants, A and B;
 * every actor below; every target (A, B, a tenant id that does not exist). After every case the harness
 * checks that nothing of B came back to anyone who is not B's, and that a refused request changed nothing in
 * A or B (their tenant tables and registry rows, compared before and after). A route with a record-level
 * check adds the record axis (own, shared, not shared; the sample names the records); a public-tenant route
 * adds the credential axis (each tenant's credential, from the sample, on its own path and on the other's).
 */

export const ACTORS = [
  "owner",
  "admin",
  "member",
  "viewer",
  "guest",
  "key:owner",
  "key:admin",
  "key:member",
  "key:viewer",
  "anonymous",
  "outsider",
  "operator",
] as const;
export type ActorName = (typeof ACTORS)[number];

/** A: the actors' tenant. B: another tenant (the outsider's). missing: a well-formed id of no tenant. */
export const TARGETS = ["A", "B", "missing"] as const;
export type Target = (typeof TARGETS)[number];
export type Side = "A" | "B";

/**
 * The record axis of a route with a record-level check: a record the actor owns, one shared with it, one not
 * shared with it. The first two pass the check, the last is refused as if it did not exist.
 */
export const RECORD_TARGETS = ["own", "shared", "not-shared"] as const;
export type RecordTarget = (typeof RECORD_TARGETS)[number];

/** The outsider is B's owner: the most that membership of another tenant can hold. */
export const OUTSIDER_ROLE: MembershipRole = "owner";

/** What a route declares, as committed in the snapshot: a change of it must update the snapshot on purpose. */
export interface Declaration {
  method: string;
  url: string;
  operationId: string;
  kind: AnyRoute["permission"]["kind"];
  permission?: string;
  record?: string;
  credential?: string;
}

export function declarationOf(route: AnyRoute): Declaration {
  const p = route.permission;
  return {
    method: route.method,
    url: route.url,
    operationId: route.operationId,
    kind: p.kind,
    ...(p.kind === "tenant" ? { permission: p.permission } : {}),
    ...(p.kind === "tenant" && p.record ? { record: p.record.name } : {}),
    ...(p.kind === "public-tenant" ? { credential: p.credential.name } : {}),
  };
}

export interface Acting {
  name: ActorName;
  /** The tenant the actor belongs to (its membership's, or its key's); null for anonymous and the operator. */
  home: Side | null;
  /** The role of the membership (or of the key, whose owner holds the same role). */
  role: MembershipRole | null;
  via: "session" | "key" | "none";
  userId?: string;
  membershipId?: string;
  sessionId?: string;
  /** The session cookie's value; kept current when a response rotates it, as a browser does. */
  cookie?: string;
  key?: string;
  keyId?: string;
}

export interface SideFixtures {
  tenant: Tenant;
  /** A member (role member) no actor is: the target of member operations. */
  bystander: { membershipId: string; userId: string; sessionId: string };
  invitationId: string;
  /** A service key of the tenant. */
  keyId: string;
  /** An SSO configuration of the tenant (its provider unreachable) and a domain it claimed (unverified). */
  ssoConfigurationId: string;
  ssoDomainId: string;
}

/** What a case sends, and what it may change: `mutates` cases run on throwaway fixtures and actors. */
export interface Case {
  route: AnyRoute;
  declared: Declaration | undefined;
  actor: Acting;
  target: Target | "-";
  /** Whether the case is expected to succeed with a method that may change state. */
  mutates: boolean;
  /** For a route with a record-level check: which record the path names, in which parameter. */
  record?: { target: RecordTarget; param: string; id: string };
  /** For a public-tenant route: whose tenant's credential the request carries (none when absent). */
  credential?: Side;
}

export interface BuildContext {
  world: World;
  case: Case;
  /** A value unique to this request (for slugs, addresses, names). */
  unique: string;
  /** The fixtures of the target side, or undefined for the missing tenant and routes without a target. */
  side: SideFixtures | undefined;
}

/** The hand-written part, per operationId: what to send, and what the handler answers once the guard lets it in. */
export interface Sample {
  body?: (ctx: BuildContext) => Record<string, unknown>;
  query?: Record<string, string>;
  /** The status when the route's permission is granted (the guard let the request through). */
  ok: number | ((ctx: BuildContext) => number);
  /** Before a case expected to succeed: puts the target in the state the operation starts from. */
  before?: (ctx: BuildContext) => Promise<void>;
  /** After a case that succeeded: undoes what would disturb later cases (a suspended tenant). */
  after?: (ctx: BuildContext) => Promise<void>;
  /**
   * For a route with a record-level check: the path parameter that names the record, and the records of
   * `side` as `actor` sees them: one it owns, one shared with it, one not shared with it (for an actor who is
   * not a member of `side`, any three of its records). Asked once per actor and side, before the route's
   * cases run; for an operation that changes its record, answer each call with new records.
   */
  records?: { param: string; of(actor: Acting, side: Side): Promise<Record<RecordTarget, string>> };
  /** For a public-tenant route: the headers of a valid credential (a signature, a token) of `side`'s tenant. */
  credential?: (side: Side, ctx: BuildContext) => Promise<Record<string, string>>;
}

export interface World {
  deps: IdentityDeps;
  test: TestApp;
  routes: AnyRoute[];
  A: SideFixtures;
  B: SideFixtures;
  actors: Record<ActorName, Acting>;
  /** The addresses of each side's people (sealed in the database, so not found in its rows). */
  emails: Record<Side, string[]>;
  /** Both tenants require MFA, and every session is multi-factor. */
  requireMfa: boolean;
  /** A fresh actor like `actor` (its own user, membership, session or key) for a case that may change it. */
  clone(actor: Acting): Promise<Acting>;
  /** A fresh member of the side (role member), with a session, for operations that end or remove it. */
  throwawayMember(side: Side): Promise<{ membershipId: string; userId: string; sessionId: string }>;
  throwawayInvitation(side: Side): Promise<string>;
  /** A fresh key of the side: a personal key of `membershipId`, or a service key. */
  throwawayKey(side: Side, membershipId?: string): Promise<string>;
  /** A second session of the actor's user. */
  extraSession(actor: Acting): Promise<string>;
  close(): Promise<void>;
}

const DAY = 24 * 60 * 60_000;
let counter = 0;
export const unique = () => `${Date.now().toString(36)}${(counter++).toString(36)}${randomBytes(2).toString("hex")}`;

export interface WorldOptions {
  /**
   * The module routes the app serves in place of the modules' own (the kernel's are always added):
   * the self-test serves altered and test-only routes here to prove the matrix fails on them.
   */
  routes?: (modules: AnyRoute[]) => AnyRoute[];
  /**
   * Both tenants require MFA (A4), and every session of the world proved a password and a TOTP code: the
   * answers must be the same as without the policy.
   */
  requireMfa?: boolean;
}

/** Every route of the application the matrix knows: the modules' (identity, audit log) and the kernel's. */
export async function buildWorld(deps: IdentityDeps, options: WorldOptions = {}): Promise<World> {
  const { db, clock } = deps;
  const identity = createIdentity(deps);
  // The audit log API over a checkpoint directory of its own (empty: its exports carry no checkpoints).
  const modules = [...identity.routes, ...auditLogRoutes(createAuditLogTestDeps(deps))];
  const served = options.routes?.(modules) ?? modules;
  const test = await buildTestApp({
    db,
    clock,
    rateLimiter: deps.rateLimiter,
    routes: served,
    accessControl: identity.accessControl,
  });
  const routes = [...served, ...kernelRoutes({ db, app: () => test.app })];
  const now = () => clock.now();

  const emails: Record<Side, string[]> = { A: [], B: [] };
  const invitee = (side: Side) => {
    const email = `${side}-invitee-${unique()}@matrix.test`;
    emails[side].push(email);
    return email;
  };
  async function newUser(label: string) {
    const email = `${label}-${unique()}@matrix.test`;
    if (label.startsWith("A-") || label.startsWith("B-")) emails[label.slice(0, 1) as Side].push(email);
    return createTestUser(deps, { email, displayName: `Matrix ${label} ${unique()}` });
  }
  const requireMfa = options.requireMfa ?? false;
  async function newSession(userId: string): Promise<{ id: string; token: string }> {
    return db.withPlatform(async (tx) => {
      const session = await createSession(tx, { userId, factor: { method: "password" }, now: now() });
      if (!requireMfa) return { id: session.id, token: session.token };
      const stepped = await reauthenticate(tx, session.id, session.token, { method: "totp" }, now());
      if (!stepped) throw new Error("the matrix could not add a second factor to a session");
      return { id: session.id, token: stepped.token };
    });
  }
  async function join(tenantId: string, userId: string, role: MembershipRole): Promise<string> {
    return db.withTenant({ tenantId }, (tx) => addMembership(tx, now(), { tenantId, userId, role, invitedBy: null }));
  }
  async function newKey(
    tenantId: string,
    creator: { membershipId: string; role: MembershipRole },
    role: ApiKeyRole,
    kind: "personal" | "service",
  ) {
    return db.withTenant({ tenantId }, (tx) =>
      createApiKey(
        tx,
        { clock, audit: deps.audit },
        {
          tenantId,
          kind,
          creator,
          name: `matrix ${kind} ${unique()}`,
          role,
          expiresAt: new Date(now().getTime() + 30 * DAY),
          requestId: uuidv7(),
        },
      ),
    );
  }

  async function member(tenantId: string, role: MembershipRole, label: string) {
    const user = await newUser(label);
    const membershipId = await join(tenantId, user.id, role);
    const session = await newSession(user.id);
    return { userId: user.id, membershipId, sessionId: session.id, cookie: session.token };
  }

  async function side(label: Side): Promise<{ fixtures: SideFixtures; owner: Awaited<ReturnType<typeof member>> }> {
    const tenant = await createTenant(
      db,
      clock,
      { slug: `matrix-${label.toLowerCase()}-${unique()}`, name: `Matrix tenant ${label} ${unique()}` },
      deps.keyRing,
      deps.audit,
    );
    if (requireMfa) {
      await db.withTenant({ tenantId: tenant.id }, (tx) =>
        tx
          .insertInto("security_policies")
          .values({ tenant_id: tenant.id, id: uuidv7(), require_mfa: true, updated_at: now() })
          .execute(),
      );
    }
    const owner = await member(tenant.id, "owner", `${label}-owner`);
    const bystander = await member(tenant.id, "member", `${label}-bystander`);
    // With a picture, an allowed read of the member avatar route answers 200, apart from a refusal's 404.
    await setAvatar(
      deps,
      { userId: bystander.userId },
      { mediaType: "image/png", content: Buffer.from(PNG_1X1, "base64") },
      { requestId: uuidv7(), address: "127.0.0.1" },
    );
    const creator = { membershipId: owner.membershipId, role: "owner" as const };
    const invitation = await db.withTenant({ tenantId: tenant.id }, (tx) =>
      createInvitation(tx, deps, {
        tenantId: tenant.id,
        email: invitee(label),
        role: "member",
        invitedBy: owner.membershipId,
        actor: { kind: "user", id: owner.membershipId },
        requestId: uuidv7(),
      }),
    );
    const key = await newKey(tenant.id, creator, "viewer", "service");
    return {
      fixtures: {
        tenant,
        bystander,
        invitationId: invitation.id,
        keyId: key.summary.id,
        ...(await ssoFixtures(deps, tenant.id)),
      },
      owner,
    };
  }

  const a = await side("A");
  const b = await side("B");
  const sides = { A: a.fixtures, B: b.fixtures };

  const sessionActor = (
    name: ActorName,
    home: Side | null,
    role: MembershipRole | null,
    m: Awaited<ReturnType<typeof member>>,
  ): Acting => ({
    name,
    home,
    role,
    via: "session",
    userId: m.userId,
    membershipId: m.membershipId,
    sessionId: m.sessionId,
    cookie: m.cookie,
  });

  async function operator(): Promise<Acting> {
    const user = await newUser("operator");
    await db.withPlatform((tx) => tx.insertInto("operators").values({ user_id: user.id, created_at: now() }).execute());
    const session = await newSession(user.id);
    return {
      name: "operator",
      home: null,
      role: null,
      via: "session",
      userId: user.id,
      sessionId: session.id,
      cookie: session.token,
    };
  }

  async function keyActor(
    name: ActorName,
    role: ApiKeyRole,
    ownerSide: Side,
    owner: { membershipId: string },
  ): Promise<Acting> {
    const created = await newKey(
      sides[ownerSide].tenant.id,
      { membershipId: owner.membershipId, role },
      role,
      "personal",
    );
    return {
      name,
      home: ownerSide,
      role,
      via: "key",
      membershipId: owner.membershipId,
      key: created.key,
      keyId: created.summary.id,
    };
  }

  const actors = {} as Record<ActorName, Acting>;
  const membersOfA = { owner: a.owner } as Record<MembershipRole, Awaited<ReturnType<typeof member>>>;
  for (const role of ["admin", "member", "viewer", "guest"] as const) {
    membersOfA[role] = await member(sides.A.tenant.id, role, `A-${role}`);
  }
  for (const role of ["owner", "admin", "member", "viewer", "guest"] as const) {
    actors[role] = sessionActor(role, "A", role, membersOfA[role]);
  }
  for (const role of ["owner", "admin", "member", "viewer"] as const) {
    actors[`key:${role}`] = await keyActor(`key:${role}`, role, "A", membersOfA[role]);
  }
  actors.anonymous = { name: "anonymous", home: null, role: null, via: "none" };
  actors.outsider = sessionActor("outsider", "B", OUTSIDER_ROLE, b.owner);
  actors.operator = await operator();

  const world: World = {
    deps,
    test,
    routes,
    A: sides.A,
    B: sides.B,
    actors,
    emails,
    requireMfa,
    async clone(actor) {
      if (actor.via === "none") return actor;
      if (actor.name === "operator") return { ...(await operator()) };
      const home = actor.home as Side;
      const role = actor.role as MembershipRole;
      const fresh = await member(sides[home].tenant.id, role, `${home}-${actor.name.replace(":", "-")}-clone`);
      if (actor.via === "key") return keyActor(actor.name, role as ApiKeyRole, home, fresh);
      return sessionActor(actor.name, home, role, fresh);
    },
    async throwawayMember(s) {
      const m = await member(sides[s].tenant.id, "member", `${s}-throwaway`);
      return { membershipId: m.membershipId, userId: m.userId, sessionId: m.sessionId };
    },
    async throwawayInvitation(s) {
      const tenantId = sides[s].tenant.id;
      const owner = s === "A" ? a.owner : b.owner;
      const invitation = await db.withTenant({ tenantId }, (tx) =>
        createInvitation(tx, deps, {
          tenantId,
          email: invitee(s),
          role: "viewer",
          invitedBy: owner.membershipId,
          actor: { kind: "user", id: owner.membershipId },
          requestId: uuidv7(),
        }),
      );
      return invitation.id;
    },
    async throwawayKey(s, membershipId) {
      const owner = s === "A" ? a.owner : b.owner;
      const creator = { membershipId: membershipId ?? owner.membershipId, role: "owner" as const };
      return (await newKey(sides[s].tenant.id, creator, "viewer", membershipId ? "personal" : "service")).summary.id;
    },
    async extraSession(actor) {
      return (await newSession(actor.userId as string)).id;
    },
    close: () => test.close(),
  };
  // Each key is used once now, so that its last-use stamp (written at most once a minute, and the clock
  // stands still) does not count as a change made by a refused request later.
  for (const role of ["owner", "admin", "member", "viewer"] as const) {
    const key = actors[`key:${role}`].key as string;
    await test.app.inject({
      url: `/api/v1/tenants/${sides.A.tenant.id}/api-keys`,
      headers: { authorization: `Bearer ${key}` },
    });
  }
  return world;
}

/** The path's parameters a case fills in; a parameter the harness does not know fails the matrix. */
export async function pathFor(ctx: BuildContext): Promise<string> {
  const { world, case: c, side } = ctx;
  const missing = c.target === "missing";
  const values: Record<string, () => Promise<string> | string> = {
    tenantId: () => (side ? side.tenant.id : uuidv7()),
    membershipId: async () => {
      if (!side) return uuidv7();
      return c.mutates ? (await world.throwawayMember(targetSide(c))).membershipId : side.bystander.membershipId;
    },
    invitationId: async () => {
      if (!side) return uuidv7();
      return c.mutates ? world.throwawayInvitation(targetSide(c)) : side.invitationId;
    },
    keyId: async () => {
      if (!side) return uuidv7();
      if (!c.mutates) return side.keyId;
      // The personal key route revokes the caller's own keys; the service key route any key of the tenant.
      const own = c.route.url.includes("/api-keys/") ? c.actor.membershipId : undefined;
      return world.throwawayKey(targetSide(c), own);
    },
    configurationId: async () => {
      if (!side) return uuidv7();
      if (!c.mutates) return side.ssoConfigurationId;
      return (await addConfiguration(world.deps, side.tenant.id, { issuer: UNREACHABLE_ISSUER })).id;
    },
    domainId: async () => {
      if (!side) return uuidv7();
      return c.mutates
        ? claimDomain(world.deps, side.tenant.id, `throwaway-${unique()}.matrix.test`)
        : side.ssoDomainId;
    },
    sessionId: async () => {
      if (missing) return uuidv7();
      const side_ = c.target as Side;
      if (c.actor.home === side_ && c.actor.userId)
        return c.mutates ? world.extraSession(c.actor) : (c.actor.sessionId as string);
      return world[side_].bystander.sessionId;
    },
    // A passkey nobody has: the routes answer one of someone else's exactly the same (404).
    passkeyId: () => uuidv7(),
    // An alert nobody has: another user's is answered exactly the same (404).
    alertId: () => uuidv7(),
    slug: () => "not-found",
    "*": () => "",
  };
  if (c.record) {
    const id = c.record.id;
    values[c.record.param] = () => id;
  }
  let path = c.route.url;
  for (const name of paramNames(c.route.url)) {
    const value = values[name];
    if (!value) throw new Error(`the matrix cannot fill :${name} of ${c.route.method} ${c.route.url}: teach pathFor`);
    path = path.replace(name === "*" ? "*" : `:${name}`, await value());
  }
  return path;
}

function targetSide(c: Case): Side {
  if (c.target !== "A" && c.target !== "B") throw new Error(`no side for target ${c.target}`);
  return c.target;
}

export function paramNames(url: string): string[] {
  return [...url.matchAll(/:([A-Za-z]+)|(\*)/g)].map((m) => m[1] ?? "*");
}

/** The targets of a route: the tenant axis where its path names ids, a single case otherwise. */
export function targetsOf(route: AnyRoute): (Target | "-")[] {
  return paramNames(route.url).some((name) => name.endsWith("Id")) ? [...TARGETS] : ["-"];
}

export function sideOf(world: World, target: Target | "-"): SideFixtures | undefined {
  return target === "A" || target === "B" ? world[target] : undefined;
}

let address = 0;
/** Every request from its own address: the matrix tests permissions, not the rate limits per address. */
function nextAddress(): string {
  address += 1;
  return `10.${(address >> 16) & 255}.${(address >> 8) & 255}.${address & 255}`;
}

const COOKIE = sessionCookieName(TEST_PUBLIC_URL);

export async function send(
  world: World,
  actor: Acting,
  request: {
    method: string;
    path: string;
    body?: Record<string, unknown> | undefined;
    query?: Record<string, string> | undefined;
    /** Sent beside the actor's own (a public-tenant route's credential). */
    headers?: Record<string, string> | undefined;
  },
): Promise<LightMyRequestResponse> {
  const headers: Record<string, string> = { "sec-fetch-site": "same-origin" };
  if (actor.cookie) headers.cookie = `${COOKIE}=${actor.cookie}`;
  if (actor.key) headers.authorization = `Bearer ${actor.key}`;
  Object.assign(headers, request.headers);
  const response = await world.test.app.inject({
    method: request.method as "GET",
    url: request.path,
    headers,
    remoteAddress: nextAddress(),
    ...(request.query ? { query: request.query } : {}),
    ...(request.body ? { payload: request.body } : {}),
  });
  const rotated = response.cookies.find((cookie) => cookie.name === COOKIE);
  if (rotated?.value && actor.cookie) actor.cookie = rotated.value;
  return response;
}

/** The tables that hold a tenant's rows (every table with tenant_id, as the tenancy catalog requires). */
async function tenantTables(world: World): Promise<string[]> {
  const rows = await world.deps.db.withPlatform((tx) =>
    sql<{ name: string }>`
      SELECT format('%I.%I', c.table_schema, c.table_name) AS name
        FROM information_schema.columns c
        JOIN information_schema.tables t USING (table_schema, table_name)
       WHERE c.column_name = 'tenant_id' AND t.table_type = 'BASE TABLE'
         AND c.table_schema NOT IN ('pg_catalog', 'information_schema', 'pgboss')
       ORDER BY 1`.execute(tx),
  );
  return rows.rows.map((row) => row.name);
}

export interface Dumper {
  /** A digest per table of the tenant's rows, its registry row and its (user, tenant) index rows. */
  digest(tenantId: string): Promise<Record<string, string>>;
  /** Every row of the tenant as text (for the strings that must not leak). */
  rows(tenantId: string): Promise<string[]>;
}

export async function dumper(world: World): Promise<Dumper> {
  const tables = await tenantTables(world);
  const sources = [
    ...tables.map((table) => ({ name: table, from: sql.raw(table), key: sql.raw("tenant_id") })),
    { name: "tenants", from: sql.raw("tenants"), key: sql.raw("id") },
    { name: "user_tenants", from: sql.raw("user_tenants"), key: sql.raw("member_of") },
  ];
  return {
    async digest(tenantId) {
      const parts = sources.map(
        (s) =>
          sql`SELECT ${s.name}::text AS name, md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) AS digest
                FROM ${s.from} x WHERE x.${s.key} = ${tenantId}`,
      );
      const rows = await world.deps.db.withTenant({ tenantId }, (tx) =>
        sql<{ name: string; digest: string }>`${sql.join(parts, sql` UNION ALL `)}`.execute(tx),
      );
      return Object.fromEntries(rows.rows.map((row) => [row.name, row.digest]));
    },
    async rows(tenantId) {
      const parts = sources.map((s) => sql`SELECT x::text AS row FROM ${s.from} x WHERE x.${s.key} = ${tenantId}`);
      const rows = await world.deps.db.withTenant({ tenantId }, (tx) =>
        sql<{ row: string }>`${sql.join(parts, sql` UNION ALL `)}`.execute(tx),
      );
      return rows.rows.map((row) => row.row);
    },
  };
}

const UUIDS = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g;

/**
 * What identifies B's rows in a response: every id in B's rows, its slug and name, and the addresses and
 * names of B's people. `registry`: B's tenant id, slug and name, which the operator may see.
 */
export async function markersOf(
  world: World,
  dump: Dumper,
  side: Side,
): Promise<{ all: Set<string>; registry: Set<string> }> {
  const { tenant } = world[side];
  const rows = await dump.rows(tenant.id);
  const ids = new Set(rows.flatMap((row) => row.match(UUIDS) ?? []));
  const people = await world.deps.db.withPlatform((tx) =>
    tx
      .selectFrom("users")
      .select(["display_name"])
      .where("id", "in", [...ids])
      .execute(),
  );
  const all = new Set([...ids, ...world.emails[side], ...people.map((person) => person.display_name)]);
  all.add(tenant.slug);
  all.add(tenant.name);
  return { all, registry: new Set([tenant.id, tenant.slug, tenant.name]) };
}

export interface MatrixSpec {
  /** The committed snapshot of every route's declaration: the expectations read the permission from here. */
  snapshot: readonly Declaration[];
  samples: Readonly<Record<string, Sample>>;
  /** The hand-written answer of a case: the status it must get. Throws for a case it cannot classify. */
  expected(declared: Declaration, c: Case, ctx: BuildContext, sample: Sample): number;
}

export interface MatrixReport {
  cases: number;
  /** Cases per operationId. */
  covered: Record<string, number>;
  failures: string[];
}

const succeeded = (status: number) => status >= 200 && status < 300;

interface Planned {
  c: Case;
  ctx: BuildContext;
  label: string;
  expected: number;
}

/**
 * Runs every route (of `routes`, all the world's by default) × actor × target and collects every way a case
 * went wrong, rather than stopping at one: it reports, the caller asserts. Per route, the cases expected to be
 * refused run first, and A's and B's rows are compared before and after them; then the cases expected to
 * succeed run (on throwaway fixtures where they change something), and the rows compared from then on are the
 * ones they leave.
 */
export async function runMatrix(
  world: World,
  spec: MatrixSpec,
  routes: readonly AnyRoute[] = world.routes,
): Promise<MatrixReport> {
  const dump = await dumper(world);
  const report: MatrixReport = { cases: 0, covered: {}, failures: [] };
  const declarations = new Map(spec.snapshot.map((d) => [`${d.method} ${d.url}`, d]));
  const baseline = { A: await dump.digest(world.A.tenant.id), B: await dump.digest(world.B.tenant.id) };
  let markers = await markersOf(world, dump, "B");

  async function run({ c, ctx, label, expected }: Planned): Promise<number | undefined> {
    const sample = spec.samples[c.route.operationId] as Sample;
    if (c.mutates) {
      // A person's own account and sessions are what these routes change: act as a copy of the actor.
      if (c.declared?.kind !== "tenant") c.actor = await world.clone(c.actor);
      await sample.before?.(ctx);
    }
    let path: string;
    try {
      path = await pathFor(ctx);
    } catch (error) {
      report.failures.push(`${label}: cannot build the request: ${(error as Error).message}`);
      return undefined;
    }
    const response = await send(world, c.actor, {
      method: c.route.method,
      path,
      body: sample.body?.(ctx),
      query: sample.query,
      headers: c.credential ? await sample.credential?.(c.credential, ctx) : undefined,
    });
    if (response.statusCode !== expected) {
      report.failures.push(`${label}: expected ${expected}, got ${response.statusCode} ${response.body.slice(0, 200)}`);
    }
    // Nothing of B reaches anyone who is not B's (the operator may see B in the registry of tenants); whoever
    // holds B's credential is B's.
    if ((c.credential ?? c.actor.home) !== "B") {
      const text = response.body.replaceAll(path, "");
      const registryAllowed = c.actor.name === "operator" && succeeded(response.statusCode);
      const leaked = [...markers.all].filter((m) => !(registryAllowed && markers.registry.has(m)) && text.includes(m));
      if (leaked.length > 0) report.failures.push(`${label}: the response holds B's ${leaked.join(", ")}`);
    }
    if (succeeded(response.statusCode)) await sample.after?.(ctx);
    return response.statusCode;
  }

  for (const route of routes) {
    const where = `${route.method} ${route.url} (${route.operationId})`;
    const declared = declarations.get(`${route.method} ${route.url}`);
    const sample = spec.samples[route.operationId];
    if (!declared) {
      report.failures.push(`${where}: not in the committed snapshot; check its permission and update the snapshot`);
      continue;
    }
    if (!sample) {
      report.failures.push(`${where}: no sample request for operationId ${route.operationId}; add one to the matrix`);
      continue;
    }
    if (route.body && !sample.body) {
      report.failures.push(`${where}: the route takes a body but its sample has none`);
      continue;
    }
    const refused: Planned[] = [];
    const granted: Planned[] = [];
    const plan = (c: Case, label: string) => {
      const ctx: BuildContext = { world, case: c, unique: unique(), side: sideOf(world, c.target) };
      report.cases += 1;
      report.covered[route.operationId] = (report.covered[route.operationId] ?? 0) + 1;
      try {
        const expected = spec.expected(declared, c, ctx, sample);
        c.mutates = succeeded(expected) && route.method !== "GET";
        (succeeded(expected) ? granted : refused).push({ c, ctx, label, expected });
      } catch (error) {
        report.failures.push(`${label}: cannot classify: ${(error as Error).message}`);
      }
    };
    const records = declared.record ? sample.records : undefined;
    for (const name of ACTORS) {
      for (const target of targetsOf(route)) {
        const label = `${where} as ${name} on ${target}`;
        const c: Case = { route, declared, actor: world.actors[name], target, mutates: false };
        if (!records) {
          plan(c, label);
          continue;
        }
        if (target !== "A" && target !== "B") {
          plan({ ...c, record: { target: "own", param: records.param, id: uuidv7() } }, label);
          continue;
        }
        // Every actor gets all three, so a refusal before the record check is shown to hold for each of them.
        const ids = await records.of(c.actor, target);
        for (const record of RECORD_TARGETS) {
          plan(
            { ...c, record: { target: record, param: records.param, id: ids[record] } },
            `${label}, ${record} record`,
          );
        }
      }
    }
    if (declared.kind === "public-tenant") {
      // The credential axis: each tenant's credential on its own path, on the other's, and on no tenant's.
      for (const holder of ["A", "B"] as const) {
        for (const target of targetsOf(route)) {
          const c: Case = {
            route,
            declared,
            actor: world.actors.anonymous,
            target,
            mutates: false,
            credential: holder,
          };
          plan(c, `${where} as anonymous with ${holder}'s credential on ${target}`);
        }
      }
    }
    if (records) {
      // Fixtures the records hook wrote are not the refused requests' doing.
      for (const s of ["A", "B"] as const) baseline[s] = await dump.digest(world[s].tenant.id);
    }

    for (const planned of refused) await run(planned);
    // The refused requests changed nothing, in the other tenant or in the caller's own.
    for (const s of ["A", "B"] as const) {
      const now = await dump.digest(world[s].tenant.id);
      const changed = Object.keys(now).filter((table) => now[table] !== baseline[s][table]);
      if (changed.length > 0) report.failures.push(`${where}: a refused request changed ${s}'s ${changed.join(", ")}`);
      baseline[s] = now;
    }

    for (const planned of granted) await run(planned);
    if (granted.length > 0) {
      baseline.A = await dump.digest(world.A.tenant.id);
      const before = JSON.stringify(baseline.B);
      baseline.B = await dump.digest(world.B.tenant.id);
      if (JSON.stringify(baseline.B) !== before) markers = await markersOf(world, dump, "B");
    }
  }
  return report;
}

/*
 * The hand-written expectations (what the matrix checks the code against). They read nothing of roles.ts: a
 * change to what a role may do, or to what a route declares, fails the matrix until it is made here on
 * purpose. They live beside the harness so that the matrix and its self-test judge routes by the same table.
 */

/** The committed declarations of every route; the expectations read each route's permission from here. */
export const SNAPSHOT_FILE = new URL("../permission-matrix.snapshot.json", import.meta.url);
export const COMMITTED_SNAPSHOT: readonly Declaration[] = existsSync(SNAPSHOT_FILE)
  ? JSON.parse(readFileSync(SNAPSHOT_FILE, "utf8"))
  : [];

type Role = "owner" | "admin" | "member" | "viewer";

/** What each role may do in its tenant (guests: nothing yet, until records can be shared with them). */
const ROLES_ALLOWED: Readonly<Record<string, readonly Role[]>> = {
  "tenant.read": ["owner", "admin", "member", "viewer"],
  "tenant.settings.update": ["owner", "admin"],
  "members.list": ["owner", "admin", "member", "viewer"],
  "members.manage": ["owner", "admin"],
  "invitations.manage": ["owner", "admin"],
  "api-keys.personal": ["owner", "admin", "member", "viewer"],
  "api-keys.service": ["owner", "admin"],
  "security.read": ["owner", "admin"],
  "security.manage": ["owner", "admin"],
  "security.break-glass": ["owner"],
  "audit.read": ["owner", "admin"],
};

/** Operations only a person who just signed in may do: an API key never can, whatever its role. */
const SESSION_ONLY = new Set([
  "createApiKey",
  "createServiceKey",
  "openBreakGlass",
  "updateSecurityPolicy",
  "createSsoConfiguration",
  "updateSsoConfiguration",
  "deleteSsoConfiguration",
  "addSsoDomain",
  "verifySsoDomain",
  "removeSsoDomain",
]);

/** Routes for people with memberships: the operator holds none and is refused. */
const usersOnly = (success: number | ((ctx: BuildContext) => number)) => (ctx: BuildContext) =>
  ctx.case.actor.name === "operator" ? 403 : typeof success === "number" ? success : success(ctx);

/** Answered only to the caller's own things: the target of the caller's own side, 404 anywhere else. */
const ownSideOnly = (success: number) => (ctx: BuildContext) =>
  ctx.case.actor.home !== null && ctx.case.actor.home === ctx.case.target ? success : 404;

const future = (ctx: BuildContext, days: number) =>
  new Date(ctx.world.deps.clock.now().getTime() + days * 24 * 60 * 60_000).toISOString();

function moveTenant(move: "suspend" | "reinstate") {
  return async (ctx: BuildContext) => {
    const tenantId = ctx.side?.tenant.id;
    const operatorId = ctx.world.actors.operator.userId;
    if (!tenantId || !operatorId) return;
    await setTenantSuspended(ctx.world.deps, { operatorId, tenantId, move, requestId: uuidv7() });
  };
}

/** A request each operation can be sent, and what it answers once its permission is granted. */
/** A real 1×1 PNG, base64: the picture the avatar routes are sent. */
const PNG_1X1 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=";

/** Client data of a WebAuthn ceremony for a challenge no one issued. */
const unknownClientData = () =>
  Buffer.from(
    JSON.stringify({ type: "webauthn.get", challenge: "A".repeat(43), origin: TEST_PUBLIC_URL.origin }),
  ).toString("base64url");
/** Well-formed passkey responses that answer no challenge of ours. */
const passkeyRegistration = () => ({
  id: "A".repeat(43),
  rawId: "A".repeat(43),
  type: "public-key",
  response: { clientDataJSON: unknownClientData(), attestationObject: "oA" },
  clientExtensionResults: {},
});
const passkeyAssertion = () => ({
  id: "A".repeat(43),
  rawId: "A".repeat(43),
  type: "public-key",
  response: { clientDataJSON: unknownClientData(), authenticatorData: "AA", signature: "AA" },
  clientExtensionResults: {},
});

const SAMPLES: Readonly<Record<string, Sample>> = {
  // Avatars (matrix actors have no picture of their own; each side's bystander has one)
  setAvatar: { body: () => ({ mediaType: "image/png", data: PNG_1X1 }), ok: 200 },
  removeAvatar: { ok: 204 },
  // Factor resets (matrix actors have none pending)
  cancelFactorReset: { ok: 404 },
  getOwnAvatar: { ok: 404 },
  getMemberAvatar: { ok: 200 },
  // Authenticator app and backup codes (issue 6; matrix actors have none, and no half-session)
  getTotp: { ok: 200 },
  startTotpEnrolment: { ok: 201 },
  confirmTotpEnrolment: { body: () => ({ code: "000000" }), ok: 409 },
  regenerateBackupCodes: { ok: 409 },
  removeTotp: { ok: 404 },
  completeSecondFactor: { body: () => ({ totpCode: "000000" }), ok: 401 },
  reauthenticateWithTotp: { body: () => ({ code: "000000" }), ok: 409 },
  // Tenant security policy (issue 6). The matrix actors signed in with a password only.
  getSecurityPolicy: { ok: 200 },
  updateSecurityPolicy: {
    body: (ctx) => ({
      requireMfa: ctx.world.requireMfa,
      requireSso: false,
      sessionLifetimeMinutes: null,
      allowedMethods: ["password", "passkey", "sso"],
      allowPersonalKeys: true,
      allowServiceKeys: true,
      breakGlassMembershipId: null,
    }),
    ok: 200,
  },
  // The matrix tenants do not require SSO: there is no glass to break.
  openBreakGlass: { ok: 409 },
  // Passkeys (issue 6; matrix actors have none, no half-session, and no ceremony under way)
  listPasskeys: { ok: 200 },
  startPasskeyRegistration: { ok: 200 },
  registerPasskey: { body: () => ({ name: "Matrix key", response: passkeyRegistration() }), ok: 400 },
  renamePasskey: { body: () => ({ name: "Renamed" }), ok: 404 },
  removePasskey: { ok: 404 },
  startPasskeySignIn: { ok: 200 },
  signInWithPasskey: { body: () => ({ response: passkeyAssertion() }), ok: 401 },
  startPasskeySecondFactor: { ok: 401 },
  completeSecondFactorWithPasskey: { body: () => ({ response: passkeyAssertion() }), ok: 401 },
  startPasskeyReauthentication: { ok: 409 },
  reauthenticateWithPasskey: { body: () => ({ response: passkeyAssertion() }), ok: 403 },
  startPasskeyPasswordReset: { body: () => ({ token: "A".repeat(43) }), ok: 400 },
  // Audit log (issue 6, L4): reads, exports and verification of A's log; the matrix actors' own events
  listAuditEvents: { ok: 200 },
  exportAuditEventsCsv: { ok: 200 },
  exportAuditChains: { ok: 200 },
  verifyAuditLog: { ok: 200 },
  listMySecurityEvents: { ok: 200 },
  // Kernel
  getHealth: { ok: 200 },
  getReadiness: { ok: 200 },
  getOpenApi: { ok: 200 },
  getApiReference: { ok: 200 },
  getProblemType: { ok: 200 },
  getWebApp: { ok: 200 },
  // Accounts (public ones answered with tokens that do not exist)
  signUp: {
    body: (ctx) => ({ email: `signup-${ctx.unique}@matrix.test`, password: TEST_PASSWORD, displayName: "New" }),
    ok: 202,
  },
  verifyEmail: { body: () => ({ token: "A".repeat(43) }), ok: 400 },
  resendVerificationEmail: { ok: 409 },
  requestPasswordReset: { body: (ctx) => ({ email: `reset-${ctx.unique}@matrix.test` }), ok: 202 },
  completePasswordReset: { body: () => ({ token: "A".repeat(43), password: `${TEST_PASSWORD} again` }), ok: 400 },
  getProfile: { ok: 200 },
  updateProfile: { body: (ctx) => ({ displayName: `Renamed ${ctx.unique}` }), ok: 200 },
  changePassword: { body: () => ({ currentPassword: TEST_PASSWORD, newPassword: `${TEST_PASSWORD} anew` }), ok: 204 },
  requestEmailChange: { body: (ctx) => ({ newEmail: `changed-${ctx.unique}@matrix.test` }), ok: 202 },
  confirmEmailChange: { body: () => ({ token: "A".repeat(43) }), ok: 400 },
  revertEmailChange: { body: () => ({ token: "A".repeat(43) }), ok: 400 },
  // Sessions
  signIn: { body: (ctx) => ({ email: `nobody-${ctx.unique}@matrix.test`, password: TEST_PASSWORD }), ok: 401 },
  getCurrentSession: { ok: 200 },
  signOut: { ok: 204 },
  listSessions: { ok: 200 },
  revokeSession: { ok: ownSideOnly(204) },
  revokeAllSessions: { ok: 200 },
  reauthenticate: { body: () => ({ password: TEST_PASSWORD }), ok: 200 },
  // Tenants and members
  createTenant: { body: (ctx) => ({ slug: `made-${ctx.unique}`, name: `Made ${ctx.unique}` }), ok: usersOnly(201) },
  listMyTenants: { ok: 200 },
  leaveTenant: { ok: usersOnly(ownSideOnly(204)) },
  getTenant: { ok: 200 },
  updateTenantSettings: { body: () => ({ timeZone: "UTC" }), ok: 200 },
  listMembers: { ok: 200 },
  changeMemberRole: { body: () => ({ role: "viewer" }), ok: 200 },
  removeMember: { ok: 204 },
  endMemberSessions: { ok: 200 },
  inviteMember: { body: (ctx) => ({ email: `invitee-${ctx.unique}@matrix.test`, role: "viewer" }), ok: 201 },
  listInvitations: { ok: 200 },
  revokeInvitation: { ok: 204 },
  acceptInvitation: { body: (ctx) => ({ token: `${ctx.world.A.tenant.id}.${"A".repeat(43)}` }), ok: usersOnly(404) },
  // Operator
  setupOperator: {
    body: (ctx) => ({
      token: "A".repeat(43),
      email: `operator-${ctx.unique}@matrix.test`,
      displayName: "Op",
      password: TEST_PASSWORD,
    }),
    ok: 404,
  },
  listAllTenants: { ok: 200 },
  createTenantForOwner: {
    body: (ctx) => ({
      slug: `op-${ctx.unique}`,
      name: `Op ${ctx.unique}`,
      ownerEmail: `owner-${ctx.unique}@matrix.test`,
    }),
    ok: 201,
  },
  suspendTenant: { ok: 200, after: moveTenant("reinstate") },
  reinstateTenant: { ok: 200, before: moveTenant("suspend") },
  // API keys
  createApiKey: { body: (ctx) => ({ name: `matrix ${ctx.unique}`, expiresAt: future(ctx, 7) }), ok: 201 },
  listApiKeys: { ok: 200 },
  revokeApiKey: { ok: 204 },
  createServiceKey: {
    body: (ctx) => ({ name: `matrix ${ctx.unique}`, role: "viewer", expiresAt: future(ctx, 7) }),
    ok: 201,
  },
  listServiceKeys: { ok: 200 },
  revokeServiceKey: { ok: 204 },
  // Single sign-on (issue 6). Each side has a configuration whose provider the outbound client refuses (the
  // start answers 503 once past the route's guard) and an unverified domain (no TXT record: verifying is 409).
  listSsoConfigurations: { ok: 200 },
  createSsoConfiguration: {
    body: (ctx) => ({
      name: `Matrix ${ctx.unique}`,
      issuer: UNREACHABLE_ISSUER,
      clientId: `matrix-${ctx.unique}`,
      clientSecret: "matrix secret",
    }),
    ok: 201,
  },
  getSsoConfiguration: { ok: 200 },
  updateSsoConfiguration: { body: (ctx) => ({ name: `Renamed ${ctx.unique}` }), ok: 200 },
  deleteSsoConfiguration: { ok: 204 },
  listSsoDomains: { ok: 200 },
  addSsoDomain: { body: (ctx) => ({ domain: `added-${ctx.unique}.matrix.test` }), ok: 201 },
  verifySsoDomain: { ok: 409 },
  removeSsoDomain: { ok: 204 },
  startSsoSignIn: { ok: (ctx) => (ctx.case.target === "missing" ? 404 : 503) },
  // The provider's answer without a state: refused before anything is looked up.
  completeSsoSignIn: { ok: 400 },
  // No SSO sign-in waits in the matrix's browsers.
  confirmSsoLink: { ok: 404 },
  // Alerts (issue 6; the path names an alert nobody has)
  listMyAlerts: { ok: 200 },
  markAlertRead: { ok: 404 },
  listTenantAlerts: { ok: 200 },
};

const outcome = (sample: Sample, ctx: BuildContext) => (typeof sample.ok === "number" ? sample.ok : sample.ok(ctx));

/** The status a case must get, from the declaration (the snapshot's) and the tables above. */
function expected(declared: Declaration, c: Case, ctx: BuildContext, sample: Sample): number {
  const { actor, target } = c;
  switch (declared.kind) {
    case "public":
      return outcome(sample, ctx);
    case "authenticated":
      // API keys work on tenant routes only; everything else needs a signed-in person.
      return actor.via === "session" ? outcome(sample, ctx) : 401;
    case "operator":
      if (actor.via !== "session") return 401;
      if (actor.name !== "operator") return 403;
      return target === "missing" ? 404 : outcome(sample, ctx);
    case "tenant": {
      const allowed = ROLES_ALLOWED[declared.permission ?? ""];
      if (!allowed) throw new Error(`no hand-written expectation for permission ${declared.permission}`);
      if (declared.record && !c.record) {
        throw new Error(
          `a record-level check (${declared.record}) whose sample gives no records (own, shared, not shared)`,
        );
      }
      if (actor.via === "none") return 401;
      // Another tenant, a tenant that does not exist, the operator, a guest: all told the tenant is not there.
      if (target === "missing" || actor.home !== target || actor.role === "guest") return 404;
      if (!allowed.includes(actor.role as Role)) return 403;
      if (actor.via === "key" && SESSION_ONLY.has(declared.operationId)) return 403;
      // The kernel answers a record the check refuses as if it did not exist.
      if (c.record?.target === "not-shared") return 404;
      return outcome(sample, ctx);
    }
    case "public-tenant":
      if (!sample.credential) throw new Error(`a public-tenant route whose sample gives no ${declared.credential}`);
      if (target === "missing") return 404;
      // A membership or session is no credential, and one tenant's credential opens no other tenant.
      return c.credential === target ? outcome(sample, ctx) : 401;
    default:
      throw new Error(`a route of kind ${declared.kind} the matrix cannot classify`);
  }
}

export function describeFailures(report: MatrixReport): string {
  return `${report.failures.length} of ${report.cases} cases failed:\n${report.failures.join("\n")}`;
}

/** The real matrix: the committed snapshot, the samples and the expectations above. */
export const MATRIX_SPEC: MatrixSpec = { snapshot: COMMITTED_SNAPSHOT, samples: SAMPLES, expected };
