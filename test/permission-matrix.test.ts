import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { IdentityDeps } from "../src/modules/identity/deps.ts";
import { createIdentityTestDeps } from "../src/modules/identity/testing.ts";
import { manualClock } from "../src/platform/clock.ts";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "./support/databases.ts";
import {
  buildWorld,
  declarationOf,
  describeFailures,
  MATRIX_SPEC,
  runMatrix,
  SNAPSHOT_FILE,
  type World,
} from "./support/matrix.ts";

/**
 * The permission matrix (promise T3): every route × actor × target, generated from the route registry by
 * test/support/matrix.ts and judged by the hand-written expectations there. The declarations are compared with
 * the committed snapshot (update it with `npx vitest run -u` once the change is meant), and the expectations
 * read each route's permission from that snapshot, not from the route. test/permission-matrix-self.test.ts
 * proves that this fails when a route's permission is weakened, leaks, or changes rows when it refuses.
 */

describe.each(DATABASE_KINDS)("permission matrix on %s", (kind) => {
  const clock = manualClock("2026-04-01T09:00:00.000Z");
  let t: TestDatabase;
  let deps: IdentityDeps;
  let world: World;

  beforeAll(async () => {
    t = await openTestDatabase(kind);
    deps = createIdentityTestDeps(t.db, clock);
    world = await buildWorld(deps);
  });
  afterAll(async () => {
    await world?.close();
    await t?.close();
  });

  it("every route's declared permission is the committed one", async () => {
    const declarations = world.routes.map(declarationOf);
    await expect(`${JSON.stringify(declarations, null, 2)}\n`).toMatchFileSnapshot(SNAPSHOT_FILE.pathname);
  });

  it("every route × actor × target answers as the hand-written table says, leaks nothing of B, and refusals change nothing", async () => {
    const report = await runMatrix(world, MATRIX_SPEC);
    expect(report.failures.length, describeFailures(report)).toBe(0);
    expect(Object.keys(report.covered).sort()).toEqual(world.routes.map((route) => route.operationId).sort());
  }, 300_000);
});

describe.each(DATABASE_KINDS)("permission matrix with MFA required on %s", (kind) => {
  const clock = manualClock("2026-04-01T09:00:00.000Z");
  let t: TestDatabase;
  let world: World;

  beforeAll(async () => {
    t = await openTestDatabase(kind);
    world = await buildWorld(createIdentityTestDeps(t.db, clock), { requireMfa: true });
  });
  afterAll(async () => {
    await world?.close();
    await t?.close();
  });

  it("answers every case as without the policy, for sessions that proved a second factor (A4)", async () => {
    const report = await runMatrix(world, MATRIX_SPEC);
    expect(report.failures.length, describeFailures(report)).toBe(0);
  }, 300_000);
});
