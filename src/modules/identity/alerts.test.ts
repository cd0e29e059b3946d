import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";
import { manualClock } from "../../platform/clock.ts";
import { uuidv7 } from "../../platform/ids.ts";
import { createTemplateRegistry } from "../../platform/mail/index.ts";
import { alertTemplates } from "./alert-mail.ts";
import { ALERT_SEVERITY, raiseAlert } from "./alerts.ts";
import type { IdentityDeps } from "./deps.ts";
import { ALERT_KINDS } from "./devices-alerts-schema.ts";
import { addMembership, removeMember } from "./memberships.ts";
import type { MembershipRole } from "./roles.ts";
import { createTenantWithOwner } from "./tenants.ts";
import { createIdentityTestDeps, createTestUser, type TestUser } from "./testing.ts";

describe("alert mail", () => {
  const registry = createTemplateRegistry(alertTemplates);
  const base = { displayName: `Ada <b>"L"</b>`, at: "2026-04-01T09:00:00.000Z", link: "https://charter.test/x" };

  it.each(ALERT_KINDS)("%s tells the user and the admins what happened, escaped in HTML", (kind) => {
    const facts = { organization: "Acme <Ltd>", factor: "totp" as const, role: "admin" as const };
    const mine = registry.render("security-alert", { ...base, kind, ...facts });
    expect(mine.text).toContain(`Hello Ada <b>"L"</b>,`);
    expect(mine.text).toContain("2026-04-01 09:00 UTC");
    expect(mine.html).not.toContain("<b>");
    const theirs = registry.render("tenant-security-alert", { ...base, kind, ...facts, member: "Grace <i>H</i>" });
    expect(theirs.subject).toBe("Security alert in Acme <Ltd>");
    expect(theirs.text).toContain("Acme <Ltd>");
    expect(theirs.html).not.toContain("<i>");
    expect(theirs.html).not.toContain("<Ltd>");
    expect(theirs.html).toContain(`<a href="https://charter.test/x">`);
  });

  it("names the factor and the role, and takes nothing else", () => {
    const added = registry.render("security-alert", { ...base, kind: "factor-added", factor: "passkey" });
    expect(added.text).toContain("A second factor (passkey) was added");
    const granted = registry.render("security-alert", {
      ...base,
      kind: "privileged-role-granted",
      organization: "Acme",
      role: "owner",
    });
    expect(granted.text).toContain("You were given the owner role in Acme");
    expect(() => registry.parse("security-alert", { ...base, kind: "new-device", email: "a@b.test" })).toThrow();
    expect(() => registry.parse("security-alert", { ...base, kind: "no-such-kind" })).toThrow();
    expect(() => registry.parse("tenant-security-alert", { ...base, kind: "new-device", member: "M" })).toThrow();
  });
});

describe.each(DATABASE_KINDS)("raiseAlert on %s", (kind) => {
  let t: TestDatabase;
  let deps: IdentityDeps;
  const clock = manualClock("2026-04-01T09:00:00.000Z");
  const unique = () => randomBytes(5).toString("hex");

  beforeAll(async () => {
    t = await openTestDatabase(kind);
    deps = createIdentityTestDeps(t.db, clock);
  });
  afterAll(async () => {
    await deps?.rateLimiter.close();
    await t?.close();
  });

  const person = (options: { verified?: boolean } = {}) =>
    createTestUser(deps, { email: `p-${unique()}@example.com`, displayName: `P ${unique()}`, ...options });

  async function tenantOf(owner: TestUser) {
    return createTenantWithOwner(deps, {
      userId: owner.id,
      tenant: { slug: `t-${unique()}`, name: `Tenant ${unique()}` },
      requestId: "setup",
    });
  }

  function join(tenantId: string, user: TestUser, role: MembershipRole) {
    return t.db.withTenant({ tenantId }, (tx) =>
      addMembership(tx, clock.now(), { tenantId, userId: user.id, role, invitedBy: null }),
    );
  }

  const tenantAlerts = (tenantId: string) =>
    t.db.withTenant({ tenantId }, (tx) =>
      tx.selectFrom("tenant_alerts").selectAll().where("tenant_id", "=", tenantId).orderBy("id").execute(),
    );
  const userAlerts = (userId: string) =>
    t.db.withPlatform((tx) => tx.selectFrom("user_alerts").selectAll().where("user_id", "=", userId).execute());
  const mailTo = async (to: string) => (await deps.mailer.outbox({ limit: 1000 })).filter((entry) => entry.to === to);

  it("stores an account's alert for the user and in every tenant they are a live member of, naming the membership", async () => {
    const user = await person();
    const ownerA = await person();
    const adminA = await person();
    const memberA = await person();
    const ownerB = await person();
    const ownerC = await person();
    const a = await tenantOf(ownerA);
    const b = await tenantOf(ownerB);
    const c = await tenantOf(ownerC);
    const left = await tenantOf(await person());
    const inA = await join(a.id, user, "member");
    await join(a.id, adminA, "admin");
    await join(a.id, memberA, "member");
    const inB = await join(b.id, user, "viewer");
    const inLeft = await join(left.id, user, "member");
    await t.db.withTenant({ tenantId: left.id }, (tx) =>
      removeMember(tx, deps, {
        tenantId: left.id,
        actor: {
          principal: { kind: "user", actorId: user.id, userId: user.id },
          grant: { actorId: inLeft, membershipId: inLeft, role: "member" },
          requestId: "leave",
        },
        membershipId: inLeft,
      }),
    );

    const id = await t.db.withPlatform((tx) =>
      raiseAlert(deps, tx, {
        kind: "factor-removed",
        userId: user.id,
        details: { factor: "totp" },
        requestId: "req-1",
      }),
    );

    const [mine] = await userAlerts(user.id);
    expect(mine).toMatchObject({ id, kind: "factor-removed", severity: "warning", in_tenant: null, read_at: null });
    expect(mine?.details).toEqual({ factor: "totp" });
    for (const [tenant, membership] of [
      [a, inA],
      [b, inB],
    ] as const) {
      const copies = await tenantAlerts(tenant.id);
      expect(copies).toHaveLength(1);
      expect(copies[0]).toMatchObject({ membership_id: membership, kind: "factor-removed", severity: "warning" });
    }
    // Neither a tenant the user left nor one they were never in hears of it.
    expect(await tenantAlerts(left.id)).toEqual([]);
    expect(await tenantAlerts(c.id)).toEqual([]);

    // alert.raised on the user's platform chain and on each tenant's security chain, with ids only.
    const platformEvents = await t.db.withPlatform((tx) =>
      tx
        .selectFrom("platform_audit_events")
        .selectAll()
        .where("action", "=", "alert.raised")
        .where("target_id", "=", id)
        .execute(),
    );
    expect(platformEvents).toHaveLength(1);
    expect(platformEvents[0]).toMatchObject({ stream: "security", subject_ids: [user.id], request_id: "req-1" });
    for (const tenant of [a, b]) {
      const events = await t.db.withTenant({ tenantId: tenant.id }, (tx) =>
        tx
          .selectFrom("audit_events")
          .select(["stream", "details"])
          .where("tenant_id", "=", tenant.id)
          .where("action", "=", "alert.raised")
          .execute(),
      );
      expect(events).toHaveLength(1);
      expect(events[0]?.stream).toBe("security");
    }
    expect(JSON.stringify(platformEvents)).not.toContain(user.email);

    // Mail: the user; for a warning, each tenant's owners and admins, but not its plain members.
    const toUser = await mailTo(user.email);
    expect(toUser.map((m) => m.template)).toEqual(["security-alert"]);
    expect(toUser[0]?.rendered?.text).toContain("A second factor (authenticator app) was removed");
    for (const admin of [ownerA, adminA, ownerB]) {
      const mail = await mailTo(admin.email);
      expect(mail.map((m) => m.template)).toEqual(["tenant-security-alert"]);
    }
    const [toOwnerA] = await mailTo(ownerA.email);
    expect(toOwnerA?.rendered?.subject).toBe(`Security alert in ${a.name}`);
    expect(toOwnerA?.rendered?.text).not.toContain(b.name);
    expect(await mailTo(memberA.email)).toEqual([]);
    expect(await mailTo(ownerC.email)).toEqual([]);
  });

  it("tells the admins nothing by mail of an info alert, which they still see", async () => {
    const user = await person();
    const owner = await person();
    const tenant = await tenantOf(owner);
    await join(tenant.id, user, "member");
    await t.db.withPlatform((tx) =>
      raiseAlert(deps, tx, { kind: "new-device", userId: user.id, details: { method: "password" }, requestId: "r" }),
    );
    expect(ALERT_SEVERITY["new-device"]).toBe("info");
    expect(await tenantAlerts(tenant.id)).toHaveLength(1);
    expect((await mailTo(user.email)).map((m) => m.template)).toEqual(["security-alert"]);
    expect(await mailTo(owner.email)).toEqual([]);
  });

  it("keeps a tenant's alert in that tenant alone, raised in its own transaction", async () => {
    const user = await person();
    const a = await tenantOf(user);
    const b = await tenantOf(user);
    const coOwner = await person();
    await join(a.id, coOwner, "owner");
    const id = await t.db.withTenant({ tenantId: a.id }, async (tx) => {
      const raised = await raiseAlert(deps, tx, {
        kind: "api-key-created",
        userId: user.id,
        tenantId: a.id,
        details: { apiKey: uuidv7(), keyKind: "service", role: "admin" },
        requestId: "r",
      });
      // The transaction still acts in tenant A afterwards.
      const own = await tx.selectFrom("memberships").select("id").where("tenant_id", "=", a.id).execute();
      expect(own).toHaveLength(2);
      return raised;
    });
    const [mine] = await userAlerts(user.id);
    expect(mine).toMatchObject({ id, kind: "api-key-created", in_tenant: a.id });
    expect(await tenantAlerts(a.id)).toMatchObject([{ membership_id: a.membershipId, kind: "api-key-created" }]);
    expect(await tenantAlerts(b.id)).toEqual([]);
    expect((await mailTo(user.email))[0]?.rendered?.text).toContain(
      `An API key was created with your account in ${a.name}`,
    );
    expect((await mailTo(coOwner.email)).map((m) => m.template)).toEqual(["tenant-security-alert"]);
  });

  it("puts back the tenant a tenant transaction acted in after copying an account's alert to others", async () => {
    const user = await person();
    const a = await tenantOf(user);
    const b = await tenantOf(user);
    await t.db.withTenant({ tenantId: a.id }, async (tx) => {
      await raiseAlert(deps, tx, {
        kind: "factor-added",
        userId: user.id,
        details: { factor: "passkey" },
        requestId: "r",
      });
      const visible = await tx.selectFrom("tenant_alerts").select("tenant_id").execute();
      expect(visible.map((row) => row.tenant_id)).toEqual([a.id]);
    });
    expect(await tenantAlerts(a.id)).toHaveLength(1);
    expect(await tenantAlerts(b.id)).toHaveLength(1);
  });

  it("stands or falls with the transaction that raised it", async () => {
    const user = await person();
    const tenant = await tenantOf(user);
    await expect(
      t.db.withPlatform(async (tx) => {
        await raiseAlert(deps, tx, { kind: "new-device", userId: user.id, details: {}, requestId: "r" });
        throw new Error("the sign-in failed after all");
      }),
    ).rejects.toThrow("the sign-in failed after all");
    expect(await userAlerts(user.id)).toEqual([]);
    expect(await tenantAlerts(tenant.id)).toEqual([]);
    expect(await mailTo(user.email)).toEqual([]);
  });

  it("mails no address its owner has not verified", async () => {
    const user = await person({ verified: false });
    await t.db.withPlatform((tx) =>
      raiseAlert(deps, tx, { kind: "failed-sign-in-burst", userId: user.id, details: {}, requestId: "r" }),
    );
    expect(await userAlerts(user.id)).toHaveLength(1);
    expect(await mailTo(user.email)).toEqual([]);
  });
});
