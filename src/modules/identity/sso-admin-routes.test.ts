import { beforeAll, beforeEach, describe, expect, it } from "vitest";
import { DATABASE_KINDS } from "../../../test/support/databases.ts";
import { manualClock } from "../../platform/clock.ts";
import { uuidv7 } from "../../platform/ids.ts";
import type { DnsResolver } from "./deps.ts";
import { RECENT_AUTHENTICATION_MS } from "./sessions.ts";
import { openSsoClient } from "./sso-configurations.ts";
import { createTenantWithOwner, joinTenant, type TenantWithOwner } from "./sso-testing.ts";
import { createTestDns, createTestUser, sessionHeaders, signIn, useIdentityTestApp } from "./testing.ts";

const SECRET = "s3cr3t-client-secret-that-must-never-come-back";

describe.each(DATABASE_KINDS)("SSO settings of a tenant on %s", (kind) => {
  let a: TenantWithOwner;
  let b: TenantWithOwner;
  let owner: string;
  const clock = manualClock("2026-05-01T09:00:00.000Z");
  const records = createTestDns();
  let dnsFailure: string | undefined;
  const dns: DnsResolver = {
    resolveTxt: async (name) => {
      if (dnsFailure) throw Object.assign(new Error(`queryTxt ${dnsFailure} ${name}`), { code: dnsFailure });
      return records.resolveTxt(name);
    },
  };

  const world = useIdentityTestApp(kind, clock, { deps: (base) => ({ ...base, dns }) });
  beforeAll(async () => {
    a = await createTenantWithOwner(world.deps, "A");
    b = await createTenantWithOwner(world.deps, "B");
  });
  beforeEach(async () => {
    clock.advance(60 * 60_000);
    dnsFailure = undefined;
    owner = (await signIn(world.app, a.owner.email, a.owner.password)).cookie;
  });

  const send = (method: "GET" | "POST" | "PATCH" | "DELETE", url: string, payload?: object, cookie = owner) =>
    world.app.app.inject({ method, url, headers: sessionHeaders(cookie), ...(payload ? { payload } : {}) });
  const configurations = (tenantId: string) => `/api/v1/tenants/${tenantId}/sso/configurations`;
  const domains = (tenantId: string) => `/api/v1/tenants/${tenantId}/sso/domains`;

  const valid = {
    name: "Okta",
    issuer: "https://login.example.com/oauth2/default",
    clientId: "charter-client",
    clientSecret: SECRET,
  };

  const eventsOf = (tenantId: string, prefix: string) =>
    world.t.db.withTenant({ tenantId }, (tx) =>
      tx
        .selectFrom("audit_events")
        .select(["action", "stream", "target_id", "details", "personal"])
        .where("tenant_id", "=", tenantId)
        .where("action", "like", `${prefix}%`)
        .orderBy("seq")
        .execute(),
    );

  const countConfigurations = async (tenantId: string) =>
    (await world.t.db.withTenant({ tenantId }, (tx) => tx.selectFrom("sso_configurations").select("id").execute()))
      .length;

  it("keeps the client secret sealed under the tenant key and never answers it", async () => {
    const created = await send("POST", configurations(a.tenant.id), { ...valid, mfaAmrValues: ["mfa"] });
    expect(created.statusCode, created.body).toBe(201);
    const body = created.json();
    expect(body).toMatchObject({
      name: "Okta",
      issuer: valid.issuer,
      clientId: "charter-client",
      clientSecretSet: true,
      emailClaim: "email",
      nameClaim: "name",
      mfaAmrValues: ["mfa"],
      enabled: true,
      redirectUri: `https://charter.test/api/v1/sso/callback/${body.id}`,
      signInUrl: `https://charter.test/api/v1/tenants/${a.tenant.id}/sso/${body.id}/start`,
    });
    expect(body).not.toHaveProperty("clientSecret");
    const listed = await send("GET", configurations(a.tenant.id));
    const one = await send("GET", `${configurations(a.tenant.id)}/${body.id}`);
    for (const response of [created, listed, one]) expect(response.body).not.toContain(SECRET);
    expect(listed.json().items.map((item: { id: string }) => item.id)).toContain(body.id);

    const { row, opened } = await world.t.db.withTenant({ tenantId: a.tenant.id }, async (tx) => ({
      row: await tx
        .selectFrom("sso_configurations")
        .select("client_secret")
        .where("tenant_id", "=", a.tenant.id)
        .where("id", "=", body.id)
        .executeTakeFirstOrThrow(),
      opened: await openSsoClient(tx, world.deps, a.tenant.id, body.id),
    }));
    expect(row.client_secret).not.toContain(SECRET);
    expect(opened?.clientSecret).toBe(SECRET);

    const events = await eventsOf(a.tenant.id, "sso.configuration-");
    expect(events.at(-1)).toMatchObject({
      action: "sso.configuration-created",
      stream: "changes",
      target_id: body.id,
      details: { enabled: true },
    });
    expect(JSON.stringify(events)).not.toContain(SECRET);
  });

  it("refuses what is not an https issuer, a bad claim name or an unknown field, and changes nothing", async () => {
    const before = await countConfigurations(a.tenant.id);
    for (const bad of [
      { issuer: "http://login.example.com" },
      { issuer: "https://login.example.com/?tenant=1" },
      { issuer: "https://login.example.com/#x" },
      { issuer: "https://user:pass@login.example.com" },
      { issuer: "login.example.com" },
      { emailClaim: "e mail" },
      { mfaAmrValues: ["has space"] },
      { name: "" },
      { clientSecret: "" },
      { extra: true },
    ]) {
      const response = await send("POST", configurations(a.tenant.id), { ...valid, ...bad });
      expect(response.statusCode, JSON.stringify(bad)).toBe(400);
    }
    expect(await countConfigurations(a.tenant.id)).toBe(before);
  });

  it("updates fields, replaces the secret, and audits the names of what changed", async () => {
    const id = (await send("POST", configurations(a.tenant.id), valid)).json().id;
    const updated = await send("PATCH", `${configurations(a.tenant.id)}/${id}`, {
      clientSecret: "a brand new secret",
      enabled: false,
      nameClaim: "preferred_username",
    });
    expect(updated.statusCode, updated.body).toBe(200);
    expect(updated.json()).toMatchObject({ enabled: false, nameClaim: "preferred_username", clientSecretSet: true });
    expect(updated.body).not.toContain("a brand new secret");
    const opened = await world.t.db.withTenant({ tenantId: a.tenant.id }, (tx) =>
      openSsoClient(tx, world.deps, a.tenant.id, id),
    );
    expect(opened?.clientSecret).toBe("a brand new secret");
    const event = (await eventsOf(a.tenant.id, "sso.configuration-updated")).at(-1);
    expect(event?.details).toEqual({ changed: ["clientSecret", "enabled", "nameClaim"] });

    expect((await send("PATCH", `${configurations(a.tenant.id)}/${id}`, { issuer: "ftp://x" })).statusCode).toBe(400);
    expect((await send("PATCH", `${configurations(a.tenant.id)}/${uuidv7()}`, { enabled: true })).statusCode).toBe(404);
    // B's configuration, named under A's path, does not exist there.
    const theirs = await send(
      "POST",
      configurations(b.tenant.id),
      valid,
      (await signIn(world.app, b.owner.email, b.owner.password)).cookie,
    );
    expect((await send("GET", `${configurations(a.tenant.id)}/${theirs.json().id}`)).statusCode).toBe(404);
    expect((await send("DELETE", `${configurations(a.tenant.id)}/${theirs.json().id}`)).statusCode).toBe(404);
  });

  it("deletes a configuration with the identities linked through it", async () => {
    const id = (await send("POST", configurations(a.tenant.id), valid)).json().id;
    await world.t.db.withTenant({ tenantId: a.tenant.id }, (tx) =>
      tx
        .insertInto("sso_identities")
        .values({
          tenant_id: a.tenant.id,
          id: uuidv7(),
          configuration_id: id,
          issuer: valid.issuer,
          subject: "someone",
          membership_id: a.owner.membershipId,
          created_at: clock.now(),
        })
        .execute(),
    );
    expect((await send("DELETE", `${configurations(a.tenant.id)}/${id}`)).statusCode).toBe(204);
    expect((await send("GET", `${configurations(a.tenant.id)}/${id}`)).statusCode).toBe(404);
    expect((await send("DELETE", `${configurations(a.tenant.id)}/${id}`)).statusCode).toBe(404);
    const left = await world.t.db.withTenant({ tenantId: a.tenant.id }, (tx) =>
      tx.selectFrom("sso_identities").select("id").where("configuration_id", "=", id).execute(),
    );
    expect(left).toEqual([]);
    expect((await eventsOf(a.tenant.id, "sso.configuration-deleted")).at(-1)).toMatchObject({
      target_id: id,
      details: { identitiesDeleted: 1 },
    });
  });

  it("needs an admin who authenticated recently to change anything; members see nothing", async () => {
    clock.advance(RECENT_AUTHENTICATION_MS + 1000);
    const stale = await send("POST", configurations(a.tenant.id), valid);
    expect(stale.statusCode).toBe(403);
    expect(stale.json().type).toBe("/problems/reauthentication-required");
    expect((await send("POST", domains(a.tenant.id), { domain: "stale.example" })).statusCode).toBe(403);
    expect((await send("GET", configurations(a.tenant.id))).statusCode).toBe(200);

    const member = await createTestUser(world.deps, { email: `member-${uuidv7()}@a.example` });
    await joinTenant(world.deps, a.tenant.id, member.id, "member");
    const cookie = (await signIn(world.app, member.email, member.password)).cookie;
    expect((await send("GET", configurations(a.tenant.id), undefined, cookie)).statusCode).toBe(403);
    expect((await send("GET", domains(a.tenant.id), undefined, cookie)).statusCode).toBe(403);
  });

  it("claims a domain in normal form, with the TXT record that proves it", async () => {
    const added = await send("POST", domains(a.tenant.id), { domain: " Sales.Example.COM. " });
    expect(added.statusCode, added.body).toBe(201);
    const domain = added.json();
    expect(domain).toMatchObject({
      domain: "sales.example.com",
      verified: false,
      verifiedAt: null,
      record: { name: "_charter.sales.example.com", type: "TXT" },
    });
    expect(domain.record.value).toMatch(/^charter-verification=[A-Za-z0-9_-]{43}$/);
    expect((await send("POST", domains(a.tenant.id), { domain: "sales.example.com" })).statusCode).toBe(409);
    // Another tenant may claim it too: each proves it with its own token.
    const cookieB = (await signIn(world.app, b.owner.email, b.owner.password)).cookie;
    const theirs = await send("POST", domains(b.tenant.id), { domain: "sales.example.com" }, cookieB);
    expect(theirs.statusCode).toBe(201);
    expect(theirs.json().record.value).not.toBe(domain.record.value);

    const idn = await send("POST", domains(a.tenant.id), { domain: "bücher.example" });
    expect(idn.json().domain).toBe("xn--bcher-kva.example");
    for (const bad of ["localhost", "192.0.2.1", "not a domain", "-x.example", "x..example", `${"a".repeat(64)}.com`]) {
      expect((await send("POST", domains(a.tenant.id), { domain: bad })).statusCode, bad).toBe(400);
    }
    const events = await eventsOf(a.tenant.id, "sso.domain-added");
    expect(events.map((event) => event.target_id)).toContain(domain.id);
  });

  it("verifies a domain only when its TXT record holds the token", async () => {
    const domain = (await send("POST", domains(a.tenant.id), { domain: `v${Date.now()}.example` })).json();
    const verify = () => send("POST", `${domains(a.tenant.id)}/${domain.id}/verify`);

    const missing = await verify();
    expect(missing.statusCode).toBe(409);
    expect(missing.json().detail).toContain(domain.record.name);
    records.records.set(domain.record.name, [["charter-verification=someone-elses-token"], ["v=spf1 -all"]]);
    expect((await verify()).statusCode).toBe(409);
    dnsFailure = "ESERVFAIL";
    expect((await verify()).statusCode).toBe(503);
    dnsFailure = undefined;
    const listed = await send("GET", domains(a.tenant.id));
    expect(listed.json().items.find((item: { id: string }) => item.id === domain.id).verified).toBe(false);

    // A long record comes in several strings.
    const value: string = domain.record.value;
    records.records.set(domain.record.name, [["v=spf1 -all"], [value.slice(0, 30), value.slice(30)]]);
    const verified = await verify();
    expect(verified.statusCode, verified.body).toBe(200);
    expect(verified.json()).toMatchObject({ verified: true, verifiedAt: clock.now().toISOString() });
    expect((await verify()).statusCode).toBe(200);
    const events = await eventsOf(a.tenant.id, "sso.domain-verified");
    expect(events.filter((event) => event.target_id === domain.id)).toHaveLength(1);

    // Not B's to verify, nor to remove.
    const cookieB = (await signIn(world.app, b.owner.email, b.owner.password)).cookie;
    expect((await send("POST", `${domains(b.tenant.id)}/${domain.id}/verify`, undefined, cookieB)).statusCode).toBe(
      404,
    );
    expect((await send("DELETE", `${domains(b.tenant.id)}/${domain.id}`, undefined, cookieB)).statusCode).toBe(404);
  });

  it("removes a domain claim", async () => {
    const domain = (await send("POST", domains(a.tenant.id), { domain: `r${Date.now()}.example` })).json();
    expect((await send("DELETE", `${domains(a.tenant.id)}/${domain.id}`)).statusCode).toBe(204);
    expect((await send("DELETE", `${domains(a.tenant.id)}/${domain.id}`)).statusCode).toBe(404);
    expect((await send("POST", `${domains(a.tenant.id)}/${domain.id}/verify`)).statusCode).toBe(404);
    expect((await eventsOf(a.tenant.id, "sso.domain-removed")).at(-1)).toMatchObject({
      target_id: domain.id,
      details: { wasVerified: false },
    });
  });
});
