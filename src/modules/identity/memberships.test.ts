import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";
import { manualClock } from "../../platform/clock.ts";
import { HttpProblem } from "../../platform/http/problem.ts";
import { uuidv7 } from "../../platform/ids.ts";
import type { IdentityDeps } from "./deps.ts";
import { addMembership, changeRole, mayManage, type TenantActor } from "./memberships.ts";
import { MEMBERSHIP_ROLES, type MembershipRole } from "./roles.ts";
import { createTenantWithOwner } from "./tenants.ts";
import { createIdentityTestDeps, createTestUser } from "./testing.ts";

describe("rank rules", () => {
  it("nobody manages or grants a role above their own, so only owners touch owners", () => {
    const allowed: string[] = [];
    for (const actor of MEMBERSHIP_ROLES) {
      for (const current of MEMBERSHIP_ROLES) {
        for (const next of MEMBERSHIP_ROLES) {
          if (mayManage(actor, current, next)) allowed.push(`${actor}:${current}->${next}`);
        }
      }
    }
    expect(allowed.filter((rule) => rule.includes("owner") && !rule.startsWith("owner:"))).toEqual([]);
    expect(allowed).toContain("owner:owner->admin");
    expect(allowed).toContain("admin:admin->member");
    expect(allowed).toContain("admin:member->admin");
    expect(allowed).not.toContain("admin:member->owner");
    expect(allowed).not.toContain("viewer:viewer->member");
    expect(mayManage("admin", "owner")).toBe(false);
    expect(mayManage("admin", "admin")).toBe(true);
  });
});

describe.each(DATABASE_KINDS)("owners on %s", (kind) => {
  let t: TestDatabase;
  let deps: IdentityDeps;
  const clock = manualClock("2026-04-01T09:00:00.000Z");

  beforeAll(async () => {
    t = await openTestDatabase(kind);
    deps = createIdentityTestDeps(t.db, clock);
  });
  afterAll(async () => {
    await deps?.rateLimiter.close();
    await t?.close();
  });

  /** A tenant with two owners: its creator and a second one. */
  async function twoOwners() {
    const a = await createTestUser(deps, { email: `a-${randomBytes(4).toString("hex")}@example.com` });
    const b = await createTestUser(deps, { email: `b-${randomBytes(4).toString("hex")}@example.com` });
    const tenant = await createTenantWithOwner(deps, {
      userId: a.id,
      tenant: { slug: `o-${randomBytes(5).toString("hex")}`, name: "Owners" },
      requestId: "setup",
    });
    const bMembership = await t.db.withTenant({ tenantId: tenant.id }, (tx) =>
      addMembership(tx, clock.now(), { tenantId: tenant.id, userId: b.id, role: "owner", invitedBy: null }),
    );
    const actor = (userId: string, membershipId: string): TenantActor => ({
      principal: { kind: "user", actorId: userId, userId },
      grant: { actorId: membershipId, membershipId, role: "owner" },
      requestId: uuidv7(),
    });
    return { tenantId: tenant.id, a: actor(a.id, tenant.membershipId), b: actor(b.id, bMembership) };
  }

  const owners = (tenantId: string) =>
    t.db.withTenant({ tenantId }, (tx) =>
      tx
        .selectFrom("memberships")
        .select("id")
        .where("tenant_id", "=", tenantId)
        .where("role", "=", "owner")
        .where("status", "=", "active")
        .execute(),
    );

  const demote = (tenantId: string, actor: TenantActor, membershipId: string, role: MembershipRole = "admin") =>
    t.db.withTenant({ tenantId, actorId: actor.grant.actorId }, (tx) =>
      changeRole(tx, deps, { tenantId, actor, membershipId, role }),
    );

  const refusals = (actorId: string) =>
    t.db.withPlatform((tx) =>
      tx
        .selectFrom("platform_audit_events")
        .select(["action", "details", "actor_id"])
        .where("actor_id", "=", actorId)
        .where("action", "=", "membership.change-refused")
        .execute(),
    );

  // Each owner demoting the other: the second is no longer an owner when its turn comes (rank). Each owner
  // demoting themselves: the second finds itself the last owner. Either way one owner stays.
  const scenarios = [
    { name: "two owners demoting each other", self: false, refusal: "forbidden", reason: "rank" },
    { name: "two owners each demoting themselves", self: true, refusal: "conflict", reason: "last-owner" },
  ] as const;

  it.each(scenarios)("$name one after the other: one owner stays", async ({ self, refusal, reason }) => {
    const { tenantId, a, b } = await twoOwners();
    await demote(tenantId, a, self ? a.grant.actorId : b.grant.actorId);
    await expect(demote(tenantId, b, self ? b.grant.actorId : a.grant.actorId)).rejects.toMatchObject({
      slug: refusal,
    });
    expect(await owners(tenantId)).toHaveLength(1);
    const [denied] = await refusals(b.principal.actorId);
    expect(denied?.details).toEqual({ tenant: tenantId, operation: "role-change", reason });
  });

  // PGlite runs one transaction at a time: only PostgreSQL can interleave them.
  const concurrently = kind === "postgres" ? it.each(scenarios) : () => {};
  concurrently(
    "$name at the same time: the second waits on the owners' lock, then is refused (PostgreSQL)",
    async ({ self, refusal }) => {
      const { tenantId, a, b } = await twoOwners();
      let release: () => void = () => {};
      const held = new Promise<void>((resolve) => {
        release = resolve;
      });
      let changed: () => void = () => {};
      const firstChanged = new Promise<void>((resolve) => {
        changed = resolve;
      });
      // A's change holds its transaction open; B's starts meanwhile and must wait for it.
      const first = t.db.withTenant({ tenantId }, async (tx) => {
        const target = self ? a.grant.actorId : b.grant.actorId;
        await changeRole(tx, deps, { tenantId, actor: a, membershipId: target, role: "admin" });
        changed();
        await held;
      });
      await firstChanged;
      const second = demote(tenantId, b, self ? b.grant.actorId : a.grant.actorId).then(
        () => "demoted",
        (error: unknown) => (error instanceof HttpProblem ? error.slug : error),
      );
      const waiting = async () =>
        Number(
          (
            (await t.superuser(
              "SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
            )) as { n: number }[]
          )[0]?.n,
        );
      for (let i = 0; i < 100 && (await waiting()) === 0; i++) await new Promise((resolve) => setTimeout(resolve, 20));
      expect(await waiting()).toBe(1);
      release();
      await first;
      expect(await second).toBe(refusal);
      expect(await owners(tenantId)).toHaveLength(1);
    },
  );

  it("an actor demoted since its request was let in acts with its current role", async () => {
    const { tenantId, a, b } = await twoOwners();
    await demote(tenantId, a, b.grant.actorId, "member");
    // B's grant still says owner; its membership now says member, which cannot manage an owner.
    await expect(demote(tenantId, b, a.grant.actorId)).rejects.toMatchObject({ slug: "forbidden" });
    const [refusal] = await refusals(b.principal.actorId);
    expect(refusal?.details).toMatchObject({ reason: "rank" });
    expect((await owners(tenantId)).map((o) => o.id)).toEqual([a.grant.actorId]);
  });
});
