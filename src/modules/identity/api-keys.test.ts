import * as crypto from "node:crypto";
import fc from "fast-check";
import type { LightMyRequestResponse } from "fastify";
import { beforeAll, describe, expect, it, vi } from "vitest";
import { DATABASE_KINDS } from "../../../test/support/databases.ts";
import { manualClock } from "../../platform/clock.ts";
import type { Tx } from "../../platform/db/index.ts";
import { uuidv7 } from "../../platform/ids.ts";
import { createTenant, type Tenant } from "../../platform/tenancy/tenants.ts";
import { hashSecret, newApiKey, parseApiKey, verifyApiKey } from "./api-keys.ts";
import type { MembershipRole } from "./roles.ts";
import { RECENT_AUTHENTICATION_MS } from "./sessions.ts";
import { sessionHeaders, signIn, useIdentityTestApp } from "./testing.ts";

// Spied on, not replaced: the test proves the secret's hash is compared with timingSafeEqual.
vi.mock("node:crypto", async (importOriginal) => {
  const actual = await importOriginal<typeof import("node:crypto")>();
  return { ...actual, timingSafeEqual: vi.fn(actual.timingSafeEqual) };
});

const KEY_SHAPE = /^chk_[0-9a-f]{32}_[0-9a-f]{64}[0-9A-Za-z]{6}$/;

/** A transaction that must not be used: proves a key was refused before any lookup. */
const untouchableTx = new Proxy({} as Tx, {
  get(_target, property) {
    throw new Error(`the database was consulted (${String(property)})`);
  },
});

describe("API key format", () => {
  it("is chk_<id>_<secret><checksum>, parses back to its id, and stores only the secret's SHA-256", () => {
    const id = uuidv7();
    const { key, secretHash } = newApiKey(id);
    expect(key).toMatch(KEY_SHAPE);
    expect(key.slice(4, 36)).toBe(id.replaceAll("-", ""));
    const parsed = parseApiKey(key);
    expect(parsed?.id).toBe(id);
    expect(parsed?.secret).toBe(key.slice(37, 101));
    expect(secretHash.equals(crypto.createHash("sha256").update(key.slice(37, 101)).digest())).toBe(true);
    expect(hashSecret(parsed?.secret ?? "").equals(secretHash)).toBe(true);
    // Two keys for one id share nothing secret.
    expect(newApiKey(id).key).not.toBe(key);
  });

  it("refuses any one-character change through the checksum, without consulting the database", async () => {
    const { key } = newApiKey(uuidv7());
    const alphabet = "0123456789abcdefABCDEFXYZxyz_-";
    const changes = fc
      .tuple(fc.nat({ max: key.length - 1 }), fc.constantFrom(...alphabet))
      .filter(([at, char]) => key[at] !== char);
    await fc.assert(
      fc.asyncProperty(changes, async ([at, char]) => {
        const changed = key.slice(0, at) + char + key.slice(at + 1);
        expect(parseApiKey(changed)).toBeUndefined();
        expect(await verifyApiKey(untouchableTx, uuidv7(), changed, new Date())).toBeUndefined();
      }),
      { numRuns: 500 },
    );
  });

  it("refuses what is not a key at all without a lookup", async () => {
    const { key } = newApiKey(uuidv7());
    for (const text of ["", "chk_", key.slice(0, -1), `${key}0`, key.toUpperCase(), ` ${key}`, `Bearer ${key}`]) {
      expect(parseApiKey(text)).toBeUndefined();
      expect(await verifyApiKey(untouchableTx, uuidv7(), text, new Date())).toBeUndefined();
    }
  });
});

const DAY = 24 * 60 * 60_000;
const SUMMARY_FIELDS = [
  "createdAt",
  "expiresAt",
  "id",
  "kind",
  "lastUsedAt",
  "name",
  "ownerMembershipId",
  "revokedAt",
  "role",
];

interface Member {
  membershipId: string;
  headers: Record<string, string>;
}

interface Created {
  id: string;
  key: string;
  name: string;
  role: string;
  expiresAt: string;
}

const bearer = (key: string) => ({ authorization: `Bearer ${key}` });
const secretOf = (key: string) => parseApiKey(key)?.secret ?? "";

describe.each(DATABASE_KINDS)("API keys on %s", (kind) => {
  const clock = manualClock("2026-03-01T10:00:00.000Z");
  const world = useIdentityTestApp(kind, clock);
  let tenant: Tenant;
  let other: Tenant;
  const people = {} as Record<"owner" | "admin" | "member" | "viewer" | "guest" | "otherAdmin", Member>;

  const newTenant = () =>
    createTenant(
      world.t.db,
      clock,
      { slug: `k-${crypto.randomBytes(5).toString("hex")}`, name: "Acme" },
      world.deps.keyRing,
      world.deps.audit,
    );

  /** A signed-in member of `tenantId` with `role`, the membership inserted as the member service would. */
  async function join(tenantId: string, role: MembershipRole): Promise<Member> {
    const user = await world.newUser({ label: role });
    const membershipId = await world.addMember(tenantId, user.id, role);
    const session = await signIn(world.app, user.email, user.password);
    return { membershipId, headers: sessionHeaders(session.cookie) };
  }

  const inDays = (days: number) => new Date(clock.now().getTime() + days * DAY).toISOString();

  const request = (method: "GET" | "POST" | "DELETE", url: string, headers: Record<string, string>, payload?: object) =>
    world.app.app.inject({ method, url, headers, ...(payload ? { payload } : {}) });

  const keysUrl = (tenantId: string, kind: "api-keys" | "service-keys" = "api-keys") =>
    `/api/v1/tenants/${tenantId}/${kind}`;

  async function createKey(
    by: Member,
    body: object = {},
    kind: "api-keys" | "service-keys" = "api-keys",
    tenantId = tenant.id,
  ): Promise<Created> {
    const response = await request("POST", keysUrl(tenantId, kind), by.headers, {
      name: "CI",
      expiresAt: inDays(30),
      ...body,
    });
    expect({ status: response.statusCode, body: response.body }).toMatchObject({ status: 201 });
    return response.json() as Created;
  }

  const keyRow = (tenantId: string, id: string) =>
    world.t.db.withTenant({ tenantId }, async (tx) => {
      const row = await tx
        .selectFrom("api_keys")
        .selectAll()
        .where("tenant_id", "=", tenantId)
        .where("id", "=", id)
        .executeTakeFirstOrThrow();
      // PGlite hands bytea back as a plain Uint8Array.
      return { ...row, secret_hash: Buffer.from(row.secret_hash) };
    });

  const events = (tenantId: string, action: string, targetId: string) =>
    world.t.db.withTenant({ tenantId }, (tx) =>
      tx
        .selectFrom("audit_events")
        .selectAll()
        .where("tenant_id", "=", tenantId)
        .where("action", "=", action)
        .where("target_id", "=", targetId)
        .execute(),
    );

  const status = (response: LightMyRequestResponse) => response.statusCode;

  beforeAll(async () => {
    tenant = await newTenant();
    other = await newTenant();
    for (const role of ["owner", "admin", "member", "viewer", "guest"] as const)
      people[role] = await join(tenant.id, role);
    people.otherAdmin = await join(other.id, "admin");
  });

  it("creates a personal key shown once, stores only the SHA-256 of its secret, and audits it without secrets", async () => {
    const response = await request("POST", keysUrl(tenant.id), people.owner.headers, {
      name: "Deploy bot",
      expiresAt: inDays(30),
    });
    expect(response.statusCode).toBe(201);
    const created = response.json() as Created;
    expect(Object.keys(created).sort()).toEqual(["expiresAt", "id", "key", "name", "role"]);
    expect(created).toMatchObject({ name: "Deploy bot", role: "owner", expiresAt: inDays(30) });
    expect(parseApiKey(created.key)?.id).toBe(created.id);
    const secret = secretOf(created.key);

    const row = await keyRow(tenant.id, created.id);
    expect(row).toMatchObject({ kind: "personal", membership_id: people.owner.membershipId, role: "owner" });
    expect(row.created_by).toBe(people.owner.membershipId);
    expect(row.secret_hash.equals(hashSecret(secret))).toBe(true);
    const stored = Object.values(row).flatMap((value) =>
      Buffer.isBuffer(value)
        ? [value.toString("hex"), value.toString("base64"), value.toString("latin1")]
        : [String(value)],
    );
    for (const value of stored) {
      expect(value).not.toContain(secret);
      expect(value).not.toContain(secret.slice(0, 16));
    }

    const [event, ...more] = await events(tenant.id, "api-key.created", created.id);
    expect(more).toEqual([]);
    expect(event).toMatchObject({
      chain_id: `tenant/${tenant.id}/security`,
      stream: "security",
      actor_kind: "user",
      actor_id: people.owner.membershipId,
      target_type: "api-key",
    });
    expect(event?.details).toEqual({ kind: "personal", role: "owner", expiresAt: inDays(30) });
    const recorded = JSON.stringify(event);
    for (const text of [secret, created.key, row.secret_hash.toString("hex"), "Deploy bot"]) {
      expect(recorded).not.toContain(text);
    }

    // The key works as a bearer token in its tenant, and nothing that lists it shows the secret again.
    for (const headers of [bearer(created.key), people.owner.headers]) {
      const listed = await request("GET", keysUrl(tenant.id), headers);
      expect(listed.statusCode).toBe(200);
      expect(listed.body).not.toContain(secret);
      expect(listed.body).not.toContain(row.secret_hash.toString("hex"));
      const item = (listed.json() as { items: Record<string, unknown>[] }).items.find((i) => i.id === created.id);
      expect(Object.keys(item ?? {}).sort()).toEqual(SUMMARY_FIELDS);
    }
    expect((await keyRow(tenant.id, created.id)).last_used_at).toEqual(clock.now());
  });

  it("compares the secret's hash in constant time, after finding the key by its id", async () => {
    const created = await createKey(people.member);
    const stored = (await keyRow(tenant.id, created.id)).secret_hash.toString("hex");
    const compare = vi.mocked(crypto.timingSafeEqual);
    const comparisons = () =>
      compare.mock.calls.map((args) =>
        args.map((b) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("hex")),
      );
    const hashOf = (key: string) => hashSecret(secretOf(key)).toString("hex");
    compare.mockClear();
    expect(status(await request("GET", keysUrl(tenant.id), bearer(created.key)))).toBe(200);
    expect(comparisons()).toContainEqual([stored, hashOf(created.key)]);

    // The same id with another secret (and a valid checksum) is looked up, compared, and refused.
    const forged = newApiKey(created.id).key;
    compare.mockClear();
    expect(status(await request("GET", keysUrl(tenant.id), bearer(forged)))).toBe(401);
    expect(comparisons()).toContainEqual([stored, hashOf(forged)]);
  });

  it("gives a key the caller's role by default and never a higher one; only admins create service keys", async () => {
    expect((await createKey(people.member)).role).toBe("member");
    expect((await createKey(people.member, { role: "viewer" })).role).toBe("viewer");
    expect((await createKey(people.viewer)).role).toBe("viewer");
    for (const [who, role] of [
      ["member", "admin"],
      ["viewer", "member"],
      ["admin", "owner"],
    ] as const) {
      const refused = await request("POST", keysUrl(tenant.id), people[who].headers, {
        name: "CI",
        role,
        expiresAt: inDays(30),
      });
      expect({ who, status: refused.statusCode }).toEqual({ who, status: 403 });
    }
    // Guests hold no keys: the tenant's key routes do not exist for them.
    expect(
      status(await request("POST", keysUrl(tenant.id), people.guest.headers, { name: "CI", expiresAt: inDays(1) })),
    ).toBe(404);

    for (const who of ["member", "viewer"] as const) {
      const refused = await request("POST", keysUrl(tenant.id, "service-keys"), people[who].headers, {
        name: "CI",
        expiresAt: inDays(30),
      });
      expect(refused.statusCode).toBe(403);
    }
    expect(
      status(
        await request("POST", keysUrl(tenant.id, "service-keys"), people.admin.headers, {
          name: "CI",
          role: "owner",
          expiresAt: inDays(30),
        }),
      ),
    ).toBe(403);
    const service = await createKey(people.admin, { role: "member" }, "service-keys");
    expect(service.role).toBe("member");
    const row = await keyRow(tenant.id, service.id);
    expect(row).toMatchObject({ kind: "service", membership_id: null, created_by: people.admin.membershipId });
    expect((await events(tenant.id, "api-key.created", service.id))[0]?.details).toMatchObject({ kind: "service" });
  });

  it("requires an expiry in the future and at most a year ahead", async () => {
    const yearAhead = new Date(clock.now());
    yearAhead.setUTCFullYear(yearAhead.getUTCFullYear() + 1);
    const attempts: [object, number][] = [
      [{ name: "CI" }, 400],
      [{ name: "CI", expiresAt: clock.now().toISOString() }, 400],
      [{ name: "CI", expiresAt: inDays(-1) }, 400],
      [{ name: "CI", expiresAt: new Date(yearAhead.getTime() + 1).toISOString() }, 400],
      [{ name: "", expiresAt: inDays(1) }, 400],
      [{ name: "CI", expiresAt: yearAhead.toISOString() }, 201],
    ];
    for (const [body, expected] of attempts) {
      const response = await request("POST", keysUrl(tenant.id), people.member.headers, body);
      expect({ body, status: response.statusCode }).toEqual({ body, status: expected });
    }
  });

  it("lists each member's own personal keys, and every key of the tenant (never a secret) for admins", async () => {
    const fresh = await newTenant();
    const owner = await join(fresh.id, "owner");
    const member = await join(fresh.id, "member");
    const ownerKey = await createKey(owner, {}, "api-keys", fresh.id);
    const memberKey = await createKey(member, {}, "api-keys", fresh.id);
    const serviceKey = await createKey(owner, { role: "viewer" }, "service-keys", fresh.id);
    const ids = (response: LightMyRequestResponse) =>
      (response.json() as { items: { id: string }[] }).items.map((item) => item.id);

    expect(ids(await request("GET", keysUrl(fresh.id), member.headers))).toEqual([memberKey.id]);
    expect(ids(await request("GET", keysUrl(fresh.id), owner.headers))).toEqual([ownerKey.id]);
    expect(status(await request("GET", keysUrl(fresh.id, "service-keys"), member.headers))).toBe(403);

    const all = await request("GET", keysUrl(fresh.id, "service-keys"), owner.headers);
    expect(all.statusCode).toBe(200);
    const items = (all.json() as { items: Record<string, unknown>[] }).items;
    expect(items.map((item) => [item.id, item.kind, item.ownerMembershipId])).toEqual([
      [ownerKey.id, "personal", owner.membershipId],
      [memberKey.id, "personal", member.membershipId],
      [serviceKey.id, "service", null],
    ]);
    for (const item of items) expect(Object.keys(item).sort()).toEqual(SUMMARY_FIELDS);
    for (const key of [ownerKey, memberKey, serviceKey]) expect(all.body).not.toContain(secretOf(key.key));

    const first = await request("GET", `${keysUrl(fresh.id, "service-keys")}?limit=2`, owner.headers);
    const page = first.json() as { items: { id: string }[]; nextCursor: string | null };
    expect(page.items.map((item) => item.id)).toEqual([ownerKey.id, memberKey.id]);
    expect(page.nextCursor).toBe(memberKey.id);
    const second = await request(
      "GET",
      `${keysUrl(fresh.id, "service-keys")}?limit=2&cursor=${page.nextCursor}`,
      owner.headers,
    );
    expect(second.json()).toMatchObject({ items: [{ id: serviceKey.id }], nextCursor: null });
    // A service key holds no personal keys of its own.
    expect((await request("GET", keysUrl(fresh.id), bearer(serviceKey.key))).json()).toEqual({
      items: [],
      nextCursor: null,
    });
  });

  it("revokes one's own key, not another's (404); admins revoke any key; a revoked key is refused", async () => {
    const ownerKey = await createKey(people.owner);
    const memberKey = await createKey(people.member);
    const own = (key: Created) => `${keysUrl(tenant.id)}/${key.id}`;
    const any = (key: Created) => `${keysUrl(tenant.id, "service-keys")}/${key.id}`;

    expect(status(await request("DELETE", own(ownerKey), people.member.headers))).toBe(404);
    expect(status(await request("DELETE", any(ownerKey), people.member.headers))).toBe(403);
    expect(status(await request("GET", keysUrl(tenant.id), bearer(ownerKey.key)))).toBe(200);

    expect(status(await request("DELETE", own(memberKey), people.member.headers))).toBe(204);
    expect(status(await request("GET", keysUrl(tenant.id), bearer(memberKey.key)))).toBe(401);
    expect(await keyRow(tenant.id, memberKey.id)).toMatchObject({
      revoked_at: clock.now(),
      revoked_by: people.member.membershipId,
    });

    expect(status(await request("DELETE", any(ownerKey), people.admin.headers))).toBe(204);
    expect(status(await request("GET", keysUrl(tenant.id), bearer(ownerKey.key)))).toBe(401);
    const [event, ...more] = await events(tenant.id, "api-key.revoked", ownerKey.id);
    expect(more).toEqual([]);
    expect(event).toMatchObject({
      stream: "security",
      chain_id: `tenant/${tenant.id}/security`,
      actor_kind: "user",
      actor_id: people.admin.membershipId,
    });
    // Revoking again changes and records nothing.
    expect(status(await request("DELETE", any(ownerKey), people.admin.headers))).toBe(204);
    expect(await events(tenant.id, "api-key.revoked", ownerKey.id)).toHaveLength(1);
    expect(status(await request("DELETE", any({ ...ownerKey, id: uuidv7() }), people.admin.headers))).toBe(404);
  });

  it("acts with the lower of the key's role and its owner's current role", async () => {
    const admin = await join(tenant.id, "admin");
    const adminKey = await createKey(admin);
    const listAll = (key: Created) => request("GET", keysUrl(tenant.id, "service-keys"), bearer(key.key));
    expect(status(await listAll(adminKey))).toBe(200);

    const setRole = (role: MembershipRole) =>
      world.t.db.withTenant({ tenantId: tenant.id }, (tx) =>
        tx
          .updateTable("memberships")
          .set({ role })
          .where("tenant_id", "=", tenant.id)
          .where("id", "=", admin.membershipId)
          .execute(),
      );
    await setRole("member");
    expect(status(await listAll(adminKey))).toBe(403);
    expect(status(await request("GET", keysUrl(tenant.id), bearer(adminKey.key)))).toBe(200);
    await setRole("guest");
    expect(status(await request("GET", keysUrl(tenant.id), bearer(adminKey.key)))).toBe(404);
    await setRole("owner");
    expect(status(await listAll(adminKey))).toBe(200);

    // The key's own role caps it however high its owner stands.
    const memberKeyOfOwner = await createKey(people.owner, { role: "member" });
    expect(status(await listAll(memberKeyOfOwner))).toBe(403);
  });

  it("refuses a personal key on the next request once its membership is removed; the tenant's service keys live on", async () => {
    const admin = await join(tenant.id, "admin");
    const personal = await createKey(admin);
    const service = await createKey(admin, {}, "service-keys");
    expect(status(await request("GET", keysUrl(tenant.id), bearer(personal.key)))).toBe(200);
    // Only the membership changes (the member service also revokes the keys): verification alone refuses it.
    await world.t.db.withTenant({ tenantId: tenant.id }, (tx) =>
      tx
        .updateTable("memberships")
        .set({ status: "removed", removed_at: clock.now() })
        .where("tenant_id", "=", tenant.id)
        .where("id", "=", admin.membershipId)
        .execute(),
    );
    expect((await keyRow(tenant.id, personal.id)).revoked_at).toBeNull();
    expect(status(await request("GET", keysUrl(tenant.id), bearer(personal.key)))).toBe(401);
    expect(status(await request("GET", keysUrl(tenant.id, "service-keys"), bearer(service.key)))).toBe(200);
  });

  it("answers 404 for a key used on another tenant's path, as for a tenant that does not exist", async () => {
    const key = await createKey(people.admin);
    for (const tenantId of [other.id, uuidv7()]) {
      for (const kind of ["api-keys", "service-keys"] as const) {
        expect(status(await request("GET", keysUrl(tenantId, kind), bearer(key.key)))).toBe(404);
      }
    }
    // Another tenant's admin cannot reach the key through their own tenant either.
    expect(
      status(await request("DELETE", `${keysUrl(other.id, "service-keys")}/${key.id}`, people.otherAdmin.headers)),
    ).toBe(404);
    expect(status(await request("GET", keysUrl(tenant.id), bearer(key.key)))).toBe(200);
    expect((await keyRow(tenant.id, key.id)).revoked_at).toBeNull();
  });

  it("is created only from a recently authenticated session, never by another key", async () => {
    const key = await createKey(people.admin);
    for (const kind of ["api-keys", "service-keys"] as const) {
      const response = await request("POST", keysUrl(tenant.id, kind), bearer(key.key), {
        name: "CI",
        expiresAt: inDays(1),
      });
      expect(response.statusCode).toBe(403);
    }
    clock.advance(RECENT_AUTHENTICATION_MS + 1);
    const stale = await request("POST", keysUrl(tenant.id), people.admin.headers, { name: "CI", expiresAt: inDays(1) });
    expect(stale.statusCode).toBe(403);
    expect(stale.json()).toMatchObject({ type: "/problems/reauthentication-required" });
  });

  it("refuses a key once it expires", async () => {
    const member = await join(tenant.id, "member");
    const key = await createKey(member, { expiresAt: inDays(1) });
    clock.advance(DAY - 1);
    expect(status(await request("GET", keysUrl(tenant.id), bearer(key.key)))).toBe(200);
    clock.advance(1);
    expect(status(await request("GET", keysUrl(tenant.id), bearer(key.key)))).toBe(401);
  });
});
