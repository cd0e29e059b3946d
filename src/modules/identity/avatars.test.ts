import { randomBytes } from "node:crypto";
import type { LightMyRequestResponse } from "fastify";
import { beforeEach, describe, expect, it } from "vitest";
import { DATABASE_KINDS } from "../../../test/support/databases.ts";
import { manualClock } from "../../platform/clock.ts";
import { uuidv7 } from "../../platform/ids.ts";
import { createApiKey } from "./api-keys.ts";
import { AVATAR_MAX_BYTES } from "./avatars.ts";
import type { MembershipRole } from "./roles.ts";
import { createTestUser, sessionHeaders, signIn, useIdentityTestApp } from "./testing.ts";

type Headers = Record<string, string>;

interface Person {
  id: string;
  headers: Headers;
}

/** A real 1×1 PNG. */
const PNG = Buffer.from(
  "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=",
  "base64",
);
/** Content that begins as each type's does (all the service looks at), padded to `size` bytes. */
const jpeg = (size = 600) => Buffer.concat([Buffer.from([0xff, 0xd8, 0xff, 0xe0]), randomBytes(size - 4)]);
const webp = (size = 600) => {
  const header = Buffer.concat([Buffer.from("RIFF"), Buffer.alloc(4), Buffer.from("WEBPVP8 ")]);
  header.writeUInt32LE(size - 8, 4);
  return Buffer.concat([header, randomBytes(size - header.length)]);
};
const png = (size: number) => Buffer.concat([PNG, randomBytes(size - PNG.length)]);

describe.each(DATABASE_KINDS)("avatars on %s", (kind) => {
  const clock = manualClock("2026-04-01T09:00:00.000Z");
  const world = useIdentityTestApp(kind, clock);
  // Fresh rate-limit windows (the longest are an hour) for each test, so sign-ins never run into another test's budget.
  beforeEach(() => clock.advance(60 * 60_000 + 1000));

  const unique = () => randomBytes(5).toString("hex");

  async function person(options: { verified?: boolean } = {}): Promise<Person> {
    const user = await createTestUser(world.deps, {
      email: `avatar-${unique()}@example.com`,
      ...(options.verified === undefined ? {} : { verified: options.verified }),
    });
    const session = await signIn(world.app, user.email, user.password);
    return { id: user.id, headers: sessionHeaders(session.cookie) };
  }

  const get = (url: string, headers: Headers) => world.app.app.inject({ method: "GET", url, headers });
  const upload = (who: Headers, mediaType: string, content: Buffer | string) =>
    world.app.app.inject({
      method: "PUT",
      url: "/api/v1/me/avatar",
      headers: who,
      payload: { mediaType, data: typeof content === "string" ? content : content.toString("base64") },
    });
  const remove = (who: Headers) => world.app.app.inject({ method: "DELETE", url: "/api/v1/me/avatar", headers: who });
  const profileAvatar = async (who: Headers) => (await get("/api/v1/me", who)).json().avatar as string | null;

  function expectStatus(response: LightMyRequestResponse, status: number, type?: string) {
    expect(response.statusCode, response.body).toBe(status);
    if (type) expect(response.json().type).toBe(`/problems/${type}`);
  }

  /** The picture as served: its type, bytes and the headers that keep it an inline image, privately cached. */
  function expectPicture(response: LightMyRequestResponse, mediaType: string, content: Buffer) {
    expectStatus(response, 200);
    expect(response.headers["content-type"]).toBe(mediaType);
    expect(response.rawPayload.equals(content)).toBe(true);
    expect(response.headers["cache-control"]).toBe("private, max-age=300");
    expect(response.headers["x-content-type-options"]).toBe("nosniff");
    expect(response.headers["content-disposition"]).toBe("inline");
    expect(response.headers["content-security-policy"]).toBe("default-src 'none'");
  }

  const filesOf = (personId: string) =>
    world.t.db.withPlatform((tx) =>
      tx
        .selectFrom("platform_files")
        .select(["id", "person_id", "kind", "media_type", "size_bytes", "deleted_at"])
        .where("person_id", "=", personId)
        .orderBy("id")
        .execute(),
    );
  const avatarFileId = async (userId: string) =>
    (
      await world.t.db.withPlatform((tx) =>
        tx.selectFrom("users").select("avatar_file_id").where("id", "=", userId).executeTakeFirstOrThrow(),
      )
    ).avatar_file_id;
  const avatarEvents = (userId: string) =>
    world.t.db.withPlatform((tx) =>
      tx
        .selectFrom("platform_audit_events")
        .select(["stream", "actor_kind", "actor_id", "target_type", "target_id", "details"])
        .where("actor_id", "=", userId)
        .where("action", "=", "account.avatar-changed")
        .orderBy("seq")
        .execute(),
    );

  async function createOrg(owner: Person): Promise<{ tenantId: string; ownerMembershipId: string }> {
    const created = await world.app.app.inject({
      method: "POST",
      url: "/api/v1/tenants",
      headers: owner.headers,
      payload: { slug: `s-${unique()}`, name: "Acme" },
    });
    expectStatus(created, 201);
    const tenantId = created.json().id as string;
    const [self] = (await get(`/api/v1/tenants/${tenantId}/members`, owner.headers)).json().items;
    return { tenantId, ownerMembershipId: self.id };
  }

  const join = (tenantId: string, who: Person, role: MembershipRole) => world.addMember(tenantId, who.id, role);

  const listed = async (tenantId: string, viewer: Person, membershipId: string) => {
    const items = (await get(`/api/v1/tenants/${tenantId}/members`, viewer.headers)).json().items as {
      id: string;
      avatar: string | null;
    }[];
    return items.find((item) => item.id === membershipId)?.avatar;
  };

  it("sets, replaces and removes the own picture, each change in the person's files and audited", async () => {
    const ada = await person();
    expect(await profileAvatar(ada.headers)).toBeNull();
    expectStatus(await get("/api/v1/me/avatar", ada.headers), 404, "not-found");

    const set = await upload(ada.headers, "image/png", PNG);
    expectStatus(set, 200);
    const firstUrl = set.json().avatar as string;
    expect(firstUrl).toMatch(/^\/api\/v1\/me\/avatar\?v=[\w-]{16}$/);
    expect(await profileAvatar(ada.headers)).toBe(firstUrl);
    expectPicture(await get(firstUrl, ada.headers), "image/png", PNG);
    // The row is under the person's key: erasing the person shreds the picture.
    const [first] = await filesOf(ada.id);
    expect(first).toMatchObject({ person_id: ada.id, kind: "avatar", media_type: "image/png", deleted_at: null });
    expect(first?.size_bytes).toBe(PNG.length);
    expect(await avatarFileId(ada.id)).toBe(first?.id);

    const replacement = jpeg();
    const replaced = await upload(ada.headers, "image/jpeg", replacement);
    expectStatus(replaced, 200);
    const secondUrl = replaced.json().avatar as string;
    expect(secondUrl).not.toBe(firstUrl);
    expectPicture(await get("/api/v1/me/avatar", ada.headers), "image/jpeg", replacement);
    const afterReplace = await filesOf(ada.id);
    expect(afterReplace).toHaveLength(2);
    expect(afterReplace[0]?.deleted_at).toEqual(clock.now());
    expect(afterReplace[1]).toMatchObject({ media_type: "image/jpeg", deleted_at: null });
    expect(await avatarFileId(ada.id)).toBe(afterReplace[1]?.id);

    expectStatus(await remove(ada.headers), 204);
    expect(await profileAvatar(ada.headers)).toBeNull();
    expectStatus(await get("/api/v1/me/avatar", ada.headers), 404, "not-found");
    expect((await filesOf(ada.id)).every((file) => file.deleted_at !== null)).toBe(true);
    expect(await avatarFileId(ada.id)).toBeNull();
    // Removing nothing changes nothing, and records nothing.
    expectStatus(await remove(ada.headers), 204);

    const events = await avatarEvents(ada.id);
    expect(events).toEqual([
      ...["set", "set", "removed"].map((change) => ({
        stream: "changes",
        actor_kind: "user",
        actor_id: ada.id,
        target_type: "user",
        target_id: ada.id,
        details: { change },
      })),
    ]);
  });

  it("stores the picture so that erasing the person leaves it unreadable", async () => {
    const ada = await person();
    expectStatus(await upload(ada.headers, "image/webp", webp()), 200);
    const fileId = (await avatarFileId(ada.id)) as string;
    const ref = { owner: { scope: "person" as const, personId: ada.id }, id: fileId };
    await world.t.db.withPlatform((tx) => world.deps.files.read(tx, ref));
    await world.t.db.withPlatform((tx) =>
      world.deps.keyRing.erasePerson(tx, { personId: ada.id, reason: "erasure-request" }),
    );
    await expect(world.t.db.withPlatform((tx) => world.deps.files.read(tx, ref))).rejects.toThrow();
  });

  it("refuses content that is not the declared type, or not an accepted type, writing nothing", async () => {
    const ada = await person();
    expectStatus(await upload(ada.headers, "image/png", PNG), 200);
    const before = await filesOf(ada.id);
    const url = await profileAvatar(ada.headers);
    const svg = Buffer.from('<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>');
    for (const [mediaType, content] of [
      ["image/png", jpeg()],
      ["image/jpeg", PNG],
      ["image/webp", PNG],
      ["image/png", svg],
      ["image/jpeg", Buffer.from("RIFF....WEBP")],
      ["image/png", Buffer.alloc(0)],
    ] as const) {
      const refused = await upload(ada.headers, mediaType, content);
      expectStatus(refused, 400, "bad-request");
      expect(refused.json().detail).toBe(`the content is not a ${mediaType} image`);
    }
    expectStatus(await upload(ada.headers, "image/svg+xml", svg), 400, "validation");
    expectStatus(await upload(ada.headers, "image/png", "not base64!"), 400, "validation");
    expect(await filesOf(ada.id)).toEqual(before);
    expect(await profileAvatar(ada.headers)).toBe(url);
    expectPicture(await get("/api/v1/me/avatar", ada.headers), "image/png", PNG);
    expect(await avatarEvents(ada.id)).toHaveLength(1);
  });

  it(`accepts ${AVATAR_MAX_BYTES} bytes and refuses a byte more (413), writing nothing`, async () => {
    const ada = await person();
    const largest = png(AVATAR_MAX_BYTES);
    expectStatus(await upload(ada.headers, "image/png", largest), 200);
    expectPicture(await get("/api/v1/me/avatar", ada.headers), "image/png", largest);
    const before = await filesOf(ada.id);
    expectStatus(await upload(ada.headers, "image/png", png(AVATAR_MAX_BYTES + 1)), 413, "payload-too-large");
    // Far past the limit, the body is refused before it is read.
    expectStatus(await upload(ada.headers, "image/png", png(2 * AVATAR_MAX_BYTES)), 413, "payload-too-large");
    expect(await filesOf(ada.id)).toEqual(before);
    expect(await avatarEvents(ada.id)).toHaveLength(1);
  });

  it("refuses an unverified account (no one could see its picture) and an API key", async () => {
    const unverified = await person({ verified: false });
    expectStatus(await upload(unverified.headers, "image/png", PNG), 403, "forbidden");
    expect(await filesOf(unverified.id)).toEqual([]);

    const owner = await person();
    const { tenantId, ownerMembershipId } = await createOrg(owner);
    const { key } = await world.t.db.withTenant({ tenantId }, (tx) =>
      createApiKey(
        tx,
        { clock, audit: world.deps.audit },
        {
          tenantId,
          kind: "personal",
          creator: { membershipId: ownerMembershipId, role: "owner" },
          name: "avatar test",
          role: "owner",
          expiresAt: new Date(clock.now().getTime() + 86_400_000),
          requestId: uuidv7(),
        },
      ),
    );
    const bearer = { authorization: `Bearer ${key}` };
    expectStatus(await upload(bearer, "image/png", PNG), 401, "unauthenticated");
    expectStatus(await remove(bearer), 401, "unauthenticated");
    expectStatus(await get("/api/v1/me/avatar", bearer), 401, "unauthenticated");
    expect(await filesOf(owner.id)).toEqual([]);
    expect(await avatarFileId(owner.id)).toBeNull();
  });

  it("shows a member's picture to the members of a shared tenant only, at the URL of the members list (T7)", async () => {
    const owner = await person();
    const { tenantId, ownerMembershipId } = await createOrg(owner);
    const mia = await person();
    const miaMembership = await join(tenantId, mia, "member");
    const vic = await person();
    await join(tenantId, vic, "viewer");
    const guest = await person();
    await join(tenantId, guest, "guest");
    const outsider = await person();
    const other = await createOrg(outsider);

    const picture = webp(2000);
    expectStatus(await upload(mia.headers, "image/webp", picture), 200);
    const url = await listed(tenantId, owner, miaMembership);
    expect(url).toMatch(new RegExp(`^/api/v1/tenants/${tenantId}/members/${miaMembership}/avatar\\?v=[\\w-]{16}$`));
    expect(await listed(tenantId, vic, miaMembership)).toBe(url);
    for (const viewer of [owner, vic, mia])
      expectPicture(await get(url as string, viewer.headers), "image/webp", picture);
    // The owner has none: listed as null, and the route says so.
    expect(await listed(tenantId, vic, ownerMembershipId)).toBeNull();
    expectStatus(await get(`/api/v1/tenants/${tenantId}/members/${ownerMembershipId}/avatar`, vic.headers), 404);

    // Not in the tenant: the tenant is not there. Through the outsider's own tenant: no such member there.
    expectStatus(await get(url as string, outsider.headers), 404, "not-found");
    const throughOwnTenant = await get(
      `/api/v1/tenants/${other.tenantId}/members/${miaMembership}/avatar`,
      outsider.headers,
    );
    expectStatus(throughOwnTenant, 404, "not-found");
    expect(throughOwnTenant.rawPayload.includes(picture.subarray(16, 64))).toBe(false);
    expectStatus(await get(url as string, guest.headers), 404, "not-found");
    expectStatus(await get(url as string, {}), 401, "unauthenticated");

    // A removed member's picture is no longer shown in the tenant.
    const removed = await world.app.app.inject({
      method: "DELETE",
      url: `/api/v1/tenants/${tenantId}/members/${miaMembership}`,
      headers: owner.headers,
    });
    expectStatus(removed, 204);
    expectStatus(await get(url as string, owner.headers), 404, "not-found");
    expectPicture(await get("/api/v1/me/avatar", mia.headers), "image/webp", picture);
  });
});
