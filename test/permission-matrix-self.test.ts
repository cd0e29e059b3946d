import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import type { IdentityDeps } from "../src/modules/identity/deps.ts";
import { createIdentityTestDeps } from "../src/modules/identity/testing.ts";
import { manualClock } from "../src/platform/clock.ts";
import { HttpProblem } from "../src/platform/http/problem.ts";
import { type AnyRoute, defineRoute, type Permission, type RecordCheck } from "../src/platform/http/routes.ts";
import { uuidv7 } from "../src/platform/ids.ts";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "./support/databases.ts";
import {
  buildWorld,
  type Declaration,
  declarationOf,
  describeFailures,
  MATRIX_SPEC,
  type MatrixReport,
  type MatrixSpec,
  type RecordTarget,
  runMatrix,
  type Sample,
  type Side,
  type World,
} from "./support/matrix.ts";

/**
 * The permission matrix's own test: the matrix of test/permission-matrix.test.ts (its harness, samples,
 * hand-written expectations and committed snapshot, none of them edited) is run over a world whose app serves
 * two real routes with a weakened permission and a few test-only routes that are wrong in one way each, and
 * must report every one of them, while the untouched real routes beside them pass. The record and credential
 * axes, which no real route has yet, are shown on test-only routes served right (they pass) and weakened
 * (they fail). One world and one run of
 * the matrix over the routes concerned; each test below reads its part of the report.
 */

/** Real routes served with less than they declare in the committed snapshot. */
const WEAKENED: Readonly<Record<string, { committed: Permission; served: Permission }>> = {
  getTenant: {
    committed: { kind: "tenant", permission: "tenant.read" },
    served: { kind: "public" },
  },
  endMemberSessions: {
    committed: { kind: "tenant", permission: "members.manage" },
    served: { kind: "tenant", permission: "members.list" },
  },
};

/** Real routes served as they are: they must pass, so that the failures above come from the weakening alone. */
const UNTOUCHED = ["listMembers", "listInvitations"];

/** A test-only route the snapshot of this test leaves out, as a new route nobody committed would be. */
const UNLISTED = "selfTestUnlisted";

/**
 * Test-only routes for the two axes no real route has yet, each served right and served weakened: notes kept
 * in memory that only their owner and the members they are shared with may read, and a hook that takes an
 * HMAC of the tenant id under that tenant's secret. The right ones must pass, the weakened ones must fail.
 */
function axisRoutes(world: () => World): { routes: AnyRoute[]; samples: Record<string, Sample> } {
  const notes = new Map<string, { tenantId: string; owner: string; sharedWith: Set<string> }>();
  const given = new Map<string, Record<RecordTarget, string>>();
  const note = (tenantId: string, owner: string, sharedWith: string[]) => {
    const id = uuidv7();
    notes.set(id, { tenantId, owner, sharedWith: new Set(sharedWith) });
    return id;
  };
  const sharedOnly: RecordCheck = {
    name: "own or shared notes",
    allows: async (_principal, grant, tenantId, params) => {
      const found = notes.get((params as { noteId: string }).noteId);
      const reader = grant.membershipId ?? "";
      return found?.tenantId === tenantId && (found.owner === reader || found.sharedWith.has(reader));
    },
  };
  const records: NonNullable<Sample["records"]> = {
    param: "noteId",
    async of(actor, side) {
      const { tenant, bystander } = world()[side];
      // A key acts for its owner's membership, and reads what that membership may.
      const reader = actor.membershipId ?? actor.name;
      const key = `${side} ${reader}`;
      const ids = given.get(key) ?? {
        own: note(tenant.id, reader, []),
        shared: note(tenant.id, bystander.membershipId, [reader]),
        "not-shared": note(tenant.id, bystander.membershipId, []),
      };
      given.set(key, ids);
      return ids;
    },
  };

  const secrets = new Map<string, Buffer>();
  const secretOf = (tenantId: string) => {
    const secret = secrets.get(tenantId) ?? randomBytes(32);
    secrets.set(tenantId, secret);
    return secret;
  };
  const sign = (tenantId: string) =>
    `${tenantId}.${createHmac("sha256", secretOf(tenantId)).update(tenantId).digest("hex")}`;
  /** Whether the signature is one of some tenant's; `bound`: of the tenant whose path it came on. */
  const signature = (name: string, bound: boolean) => ({
    name,
    verify: async (request: { headers: Record<string, unknown> }, tenantId: string) => {
      const header = String(request.headers["x-matrix-signature"] ?? "");
      const signer = header.split(".")[0] ?? "";
      if (bound && signer !== tenantId) return false;
      const expected = Buffer.from(sign(signer));
      const got = Buffer.from(header);
      return got.length === expected.length && timingSafeEqual(got, expected);
    },
  });

  const noteRoute = (operationId: string, path: string, record: RecordCheck) =>
    defineRoute({
      method: "GET",
      url: `/api/v1/tenants/:tenantId/matrix-self/${path}/:noteId`,
      operationId,
      summary: "Reads a note",
      permission: { kind: "tenant", permission: "tenant.read", record },
      params: z.object({ tenantId: z.uuid(), noteId: z.uuid() }),
      response: { 200: z.object({ noteId: z.uuid() }) },
      handler: async (request) => ({ noteId: request.params.noteId }),
    });
  const hookRoute = (operationId: string, path: string, bound: boolean) =>
    defineRoute({
      method: "POST",
      url: `/api/v1/tenants/:tenantId/matrix-self/${path}`,
      operationId,
      summary: "Receives a signed call",
      permission: { kind: "public-tenant", credential: signature("self-test signature", bound) },
      params: z.object({ tenantId: z.uuid() }),
      response: { 204: z.null() },
      handler: async (_request, reply) => reply.code(204).send(),
    });
  const credential = async (side: Side) => ({ "x-matrix-signature": sign(world()[side].tenant.id) });
  return {
    routes: [
      noteRoute(AXES.notes, "notes", sharedOnly),
      noteRoute(AXES.notesOpen, "open-notes", { name: sharedOnly.name, allows: async () => true }),
      hookRoute(AXES.signed, "signed", true),
      hookRoute(AXES.signedAnyTenant, "signed-any", false),
    ],
    samples: {
      [AXES.notes]: { ok: 200, records },
      [AXES.notesOpen]: { ok: 200, records },
      [AXES.signed]: { ok: 204, credential },
      [AXES.signedAnyTenant]: { ok: 204, credential },
    },
  };
}

const AXES = {
  notes: "selfTestNotes",
  /** Its record check lets everyone read every note. */
  notesOpen: "selfTestNotesOpen",
  signed: "selfTestSigned",
  /** Its credential check accepts any tenant's signature on any tenant's path. */
  signedAnyTenant: "selfTestSignedAnyTenant",
} as const;

/**
 * Test-only routes, each wrong in one way the matrix must catch. `world` is read when a request arrives, by
 * which time the world (and its tenants A and B) exists.
 */
function faultyRoutes(deps: IdentityDeps, world: () => World): AnyRoute[] {
  const tenantParams = z.object({ tenantId: z.uuid() });
  const nothing = { 204: z.null() };
  const unreachable = async (): Promise<never> => {
    throw new Error("the matrix must not send this route a request");
  };
  return [
    defineRoute({
      method: "GET",
      url: "/api/v1/tenants/:tenantId/matrix-self/leak",
      operationId: "selfTestLeak",
      summary: "Answers a member of one tenant with the memberships of the other",
      permission: { kind: "tenant", permission: "tenant.read" },
      params: tenantParams,
      response: { 200: z.object({ memberships: z.array(z.string()) }) },
      handler: async (request) => {
        const { A, B } = world();
        const other = request.params.tenantId === A.tenant.id ? B.tenant.id : A.tenant.id;
        const rows = await deps.db.withTenant({ tenantId: other }, (tx) =>
          tx.selectFrom("memberships").select("id").execute(),
        );
        return { memberships: rows.map((row) => row.id) };
      },
    }),
    defineRoute({
      method: "POST",
      url: "/api/v1/tenants/:tenantId/matrix-self/touch",
      operationId: "selfTestTouch",
      summary: "Changes the tenant's memberships, then refuses",
      permission: { kind: "tenant", permission: "tenant.read" },
      params: tenantParams,
      response: { 403: z.unknown() },
      handler: async (request) => {
        const tenantId = request.params.tenantId;
        await deps.db.withTenant({ tenantId }, (tx) =>
          tx
            .updateTable("memberships")
            .set({ role_changed_at: deps.clock.now() })
            .where("tenant_id", "=", tenantId)
            .execute(),
        );
        throw new HttpProblem("forbidden", "refused after the change was committed");
      },
    }),
    defineRoute({
      method: "POST",
      url: "/api/v1/tenants/:tenantId/matrix-self/hook",
      operationId: "selfTestHook",
      summary: "A public-tenant route whose sample gives no credential to send",
      permission: { kind: "public-tenant", credential: { name: "self-test signature", verify: async () => false } },
      params: tenantParams,
      response: nothing,
      handler: unreachable,
    }),
    defineRoute({
      method: "GET",
      url: "/api/v1/tenants/:tenantId/matrix-self/unnamed/:noteId",
      operationId: "selfTestRecordsUnsampled",
      summary: "A record-level check whose sample names no records",
      permission: { kind: "tenant", permission: "tenant.read", record: { name: "anything", allows: async () => true } },
      params: z.object({ tenantId: z.uuid(), noteId: z.uuid() }),
      response: nothing,
      handler: unreachable,
    }),
    defineRoute({
      method: "GET",
      url: "/api/v1/tenants/:tenantId/matrix-self/unheard-of",
      operationId: "selfTestUnknownPermission",
      summary: "A tenant permission the hand-written table does not name",
      permission: { kind: "tenant", permission: "matrix.unheard-of" },
      params: tenantParams,
      response: nothing,
      handler: unreachable,
    }),
    defineRoute({
      method: "GET",
      url: "/api/v1/tenants/:tenantId/matrix-self/widgets/:widgetId",
      operationId: "selfTestUnknownParameter",
      summary: "A path parameter the harness cannot fill",
      permission: { kind: "tenant", permission: "tenant.read" },
      params: z.object({ tenantId: z.uuid(), widgetId: z.uuid() }),
      response: nothing,
      handler: unreachable,
    }),
    defineRoute({
      method: "GET",
      url: "/api/v1/matrix-self/unsampled",
      operationId: "selfTestUnsampled",
      summary: "A route without a sample request",
      permission: { kind: "public" },
      response: nothing,
      handler: unreachable,
    }),
    defineRoute({
      method: "POST",
      url: "/api/v1/matrix-self/bodied",
      operationId: "selfTestBodyless",
      summary: "A route that takes a body its sample does not give",
      permission: { kind: "public" },
      body: z.object({ name: z.string() }),
      response: nothing,
      handler: unreachable,
    }),
    defineRoute({
      method: "GET",
      url: "/api/v1/matrix-self/unlisted",
      operationId: UNLISTED,
      summary: "A route missing from the snapshot",
      permission: { kind: "public" },
      response: nothing,
      handler: unreachable,
    }),
  ];
}

/** The hand-written part for the test-only routes, as the real matrix would be given it. */
const FAULTY_SAMPLES: Readonly<Record<string, Sample>> = {
  selfTestLeak: { ok: 200 },
  selfTestTouch: { ok: 403 },
  selfTestHook: { ok: 204 },
  selfTestRecordsUnsampled: { ok: 204 },
  selfTestUnknownPermission: { ok: 204 },
  selfTestUnknownParameter: { ok: 204 },
  selfTestBodyless: { ok: 204 },
  [UNLISTED]: { ok: 204 },
};

/** The routes whose declaration differs from the committed snapshot, as "served … / committed …". */
function drift(routes: readonly AnyRoute[], snapshot: readonly Declaration[]): Map<string, string> {
  const committed = new Map(snapshot.map((d) => [`${d.method} ${d.url}`, JSON.stringify(d)]));
  const differing = new Map<string, string>();
  for (const route of routes) {
    const served = JSON.stringify(declarationOf(route));
    const was = committed.get(`${route.method} ${route.url}`);
    if (served !== was) differing.set(route.operationId, `served ${served} / committed ${was ?? "nothing"}`);
  }
  return differing;
}

describe.each(DATABASE_KINDS)("the permission matrix on %s", (kind) => {
  const clock = manualClock("2026-04-01T09:00:00.000Z");
  let t: TestDatabase;
  let world: World;
  let report: MatrixReport;
  const failuresOf = (operationId: string) => report.failures.filter((f) => f.includes(`(${operationId})`));

  beforeAll(async () => {
    t = await openTestDatabase(kind);
    const deps = createIdentityTestDeps(t.db, clock);
    const faulty = faultyRoutes(deps, () => world);
    const axes = axisRoutes(() => world);
    world = await buildWorld(deps, {
      routes: (identity) => [
        ...identity.map((route) => {
          const weakened = WEAKENED[route.operationId];
          return weakened ? { ...route, permission: weakened.served } : route;
        }),
        ...faulty,
        ...axes.routes,
      ],
    });
    const spec: MatrixSpec = {
      ...MATRIX_SPEC,
      // What the test-only routes declare is committed here, as the real snapshot commits the real routes'.
      snapshot: [
        ...MATRIX_SPEC.snapshot,
        ...[...faulty, ...axes.routes].filter((r) => r.operationId !== UNLISTED).map(declarationOf),
      ],
      samples: { ...MATRIX_SPEC.samples, ...FAULTY_SAMPLES, ...axes.samples },
    };
    const concerned = new Set([
      ...Object.keys(WEAKENED),
      ...UNTOUCHED,
      ...[...faulty, ...axes.routes].map((r) => r.operationId),
    ]);
    report = await runMatrix(
      world,
      spec,
      world.routes.filter((route) => concerned.has(route.operationId)),
    );
  }, 120_000);
  afterAll(async () => {
    await world?.close();
    await t?.close();
  });

  it("serves the weakened routes with what the committed snapshot does not say, and the snapshot check sees it", () => {
    const differing = drift(world.routes, MATRIX_SPEC.snapshot);
    for (const [operationId, { committed, served }] of Object.entries(WEAKENED)) {
      const route = world.routes.find((r) => r.operationId === operationId);
      expect(route?.permission, operationId).toEqual(served);
      const declared = MATRIX_SPEC.snapshot.find((d) => d.operationId === operationId);
      expect(declared && { kind: declared.kind, permission: declared.permission }, operationId).toEqual(committed);
      expect(differing.get(operationId), operationId).toBeDefined();
    }
    for (const operationId of UNTOUCHED) expect(differing.get(operationId), operationId).toBeUndefined();
  });

  it("fails a tenant route weakened to public: anonymous callers and outsiders reach its handler instead of a refusal", () => {
    const failures = failuresOf("getTenant");
    for (const target of ["A", "B", "missing"]) {
      expect(failures.some((f) => f.includes(`as anonymous on ${target}: expected 401, got`))).toBe(true);
    }
    expect(failures.some((f) => f.includes("as outsider on A: expected 404, got"))).toBe(true);
  });

  it("fails a route whose tenant permission was lowered from members.manage to members.list", () => {
    const failures = failuresOf("endMemberSessions");
    expect(failures).toContainEqual(expect.stringMatching(/ as member on A: expected 403, got 200/));
    expect(failures).toContainEqual(expect.stringMatching(/ as key:member on A: expected 403, got 200/));
    // What the weakened route let the member do changed the tenant, and that is reported too.
    expect(failures).toContainEqual(expect.stringMatching(/: a refused request changed A's /));
  });

  it("reports a route that answers a member of A with B's rows, and nothing else about it", () => {
    const failures = failuresOf("selfTestLeak");
    for (const actor of ["owner", "admin", "member", "viewer", "key:owner", "key:viewer"]) {
      expect(failures).toContainEqual(expect.stringContaining(` as ${actor} on A: the response holds B's `));
    }
    expect(failures.every((f) => f.includes(": the response holds B's "))).toBe(true);
  });

  it("reports a route that changes rows of A and B before it refuses, though every status is as expected", () => {
    const failures = failuresOf("selfTestTouch");
    expect(failures).toEqual([
      expect.stringMatching(/: a refused request changed A's \S*memberships$/),
      expect.stringMatching(/: a refused request changed B's \S*memberships$/),
    ]);
  });

  it("fails, saying why, on a route it cannot classify, has no sample for, or cannot build a request for", () => {
    const expectations: Record<string, string> = {
      selfTestHook: "as owner on A: cannot classify: a public-tenant route whose sample gives no self-test signature",
      selfTestRecordsUnsampled:
        "as member on A: cannot classify: a record-level check (anything) whose sample gives no records",
      selfTestUnknownPermission:
        "as member on A: cannot classify: no hand-written expectation for permission matrix.unheard-of",
      selfTestUnknownParameter: "as member on A: cannot build the request: the matrix cannot fill :widgetId",
      selfTestUnsampled: ": no sample request for operationId selfTestUnsampled; add one to the matrix",
      selfTestBodyless: ": the route takes a body but its sample has none",
      [UNLISTED]: ": not in the committed snapshot; check its permission and update the snapshot",
    };
    for (const [operationId, message] of Object.entries(expectations)) {
      expect(failuresOf(operationId), operationId).toContainEqual(expect.stringContaining(message));
    }
  });

  it("runs a record route for each actor on its own, a shared and a not-shared record, and passes a right check", () => {
    expect(failuresOf(AXES.notes), describeFailures(report)).toEqual([]);
    // 12 actors × (A and B × 3 records + the missing tenant).
    expect(report.covered[AXES.notes]).toBe(12 * (2 * 3 + 1));
  });

  it("fails a record check that lets everyone read every note: each allowed actor reads a note not shared with it", () => {
    const allowed = [
      ...["owner", "admin", "member", "viewer", "key:owner", "key:admin", "key:member", "key:viewer"].map(
        (actor) => `${actor} on A`,
      ),
      "outsider on B",
    ];
    const failures = failuresOf(AXES.notesOpen);
    for (const who of allowed) {
      expect(failures).toContainEqual(expect.stringContaining(` as ${who}, not-shared record: expected 404, got 200`));
    }
    expect(failures).toHaveLength(allowed.length);
  });

  it("passes a public-tenant route whose credential is bound to its tenant: no credential, a membership or the other tenant's credential is refused", () => {
    expect(failuresOf(AXES.signed), describeFailures(report)).toEqual([]);
    // 12 actors without a credential and each tenant's credential, on A, B and the missing tenant.
    expect(report.covered[AXES.signed]).toBe((12 + 2) * 3);
  });

  it("fails a public-tenant route that accepts any tenant's credential: the replay on the other tenant's path is reported", () => {
    expect(failuresOf(AXES.signedAnyTenant)).toEqual([
      expect.stringContaining(" as anonymous with A's credential on B: expected 401, got 204"),
      expect.stringContaining(" as anonymous with B's credential on A: expected 401, got 204"),
    ]);
  });

  it("passes the untouched real routes run beside them, so the failures are the faults' alone", () => {
    const failures = UNTOUCHED.flatMap(failuresOf);
    expect(failures, describeFailures({ ...report, failures })).toEqual([]);
    for (const operationId of UNTOUCHED) expect(report.covered[operationId]).toBeGreaterThan(0);
  });
});
