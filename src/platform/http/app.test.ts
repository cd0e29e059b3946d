import { randomBytes } from "node:crypto";
import type { AddressInfo } from "node:net";
import { connect } from "node:net";
import { Validator } from "@seriousme/openapi-schema-validator";
import type { FastifyInstance, LightMyRequestResponse } from "fastify";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { z } from "zod";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";
import { createTestAudit } from "../audit/testing.ts";
import { manualClock } from "../clock.ts";
import { uuidv7 } from "../ids.ts";
import { createRateLimiter, type RequestFacts } from "../ratelimit/limiter.ts";
import { setFeature } from "../tenancy/features.ts";
import type { Tenant } from "../tenancy/tenants.ts";
import { createTestTenant } from "../tenancy/testing.ts";
import type { AccessControl } from "./app.ts";
import { HttpProblem, PROBLEM_TYPES, type ProblemSlug } from "./problem.ts";
import { type AnyRoute, defineRoute, type Grant, type Principal } from "./routes.ts";
import { buildTestApp, type TestApp } from "./test-app.ts";

const PUBLIC = { kind: "public" } as const;
const OK = { 200: z.object({ ok: z.boolean() }) };
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

const newSlug = () => `t-${randomBytes(6).toString("hex")}`;

/** Asserts an RFC 9457 answer of the given type and returns its body. */
function expectProblem(response: LightMyRequestResponse, slug: ProblemSlug) {
  const { status, title } = PROBLEM_TYPES[slug];
  expect({ status: response.statusCode, body: response.body }).toMatchObject({ status });
  expect(response.headers["content-type"]).toMatch(/^application\/problem\+json(;|$)/);
  const body = response.json();
  expect(body).toMatchObject({ type: `/problems/${slug}`, title, status });
  expect(body.requestId).toMatch(UUID);
  expect(body.requestId).toBe(response.headers["x-request-id"]);
  return body as { detail?: string; errors?: { path: string; message: string }[] } & Record<string, unknown>;
}

/**
 * The identity module's part, played by a test double: the `x-test-user` header names the principal,
 * `join` makes it a member of a tenant and `grant` a member with a permission. Every call is counted.
 */
function accessDouble() {
  const grants = new Set<string>();
  const members = new Set<string>();
  const calls = { principal: 0, allows: [] as string[] };
  const access: AccessControl = {
    async principal(request) {
      calls.principal += 1;
      const user = request.headers["x-test-user"];
      return typeof user === "string" ? { kind: user === "operator" ? "operator" : "user", actorId: user } : null;
    },
    async authorize(principal, { id: tenantId }, permission) {
      calls.allows.push(`${principal.actorId}|${tenantId}|${permission}`);
      if (!members.has(`${principal.actorId}|${tenantId}`)) return { outcome: "not-member" };
      if (!grants.has(`${principal.actorId}|${tenantId}|${permission}`)) return { outcome: "forbidden" };
      return { outcome: "granted", grant: { actorId: `m-${principal.actorId}`, membershipId: null, role: "test" } };
    },
  };
  const join = (actorId: string, tenantId: string) => members.add(`${actorId}|${tenantId}`);
  return {
    access,
    calls,
    join,
    grant: (actorId: string, tenantId: string, permission: string) => {
      join(actorId, tenantId);
      grants.add(`${actorId}|${tenantId}|${permission}`);
    },
  };
}

/** Handler call counts by operation id, to prove a refused request never reached its handler. */
function handlerCalls() {
  const counts = new Map<string, number>();
  return {
    hit: (operationId: string) => counts.set(operationId, (counts.get(operationId) ?? 0) + 1),
    of: (operationId: string) => counts.get(operationId) ?? 0,
  };
}

/** Opens a TCP connection and closes it again; rejects when the port refuses. */
function tcpConnect(port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      resolve();
    });
    socket.once("error", reject);
  });
}

/** The nonces of the `script-src` and `style-src` directives of a CSP header. */
function cspNonces(csp: string): { script: string | undefined; style: string | undefined } {
  const directive = (name: string) =>
    csp
      .split(";")
      .map((d) => d.trim())
      .find((d) => d.startsWith(`${name} `));
  const nonce = (d: string | undefined) => /'nonce-([^']+)'/.exec(d ?? "")?.[1];
  return { script: nonce(directive("script-src")), style: nonce(directive("style-src")) };
}

/** The nonce attribute of every tag of `name` in `html` (undefined for a tag without one). */
function tagNonces(html: string, name: "script" | "style"): (string | undefined)[] {
  return [...html.matchAll(new RegExp(`<${name}\\b([^>]*)>`, "gi"))].map(
    (m) => /\bnonce="([^"]*)"/.exec(m[1] ?? "")?.[1],
  );
}

describe("HTTP kernel on pglite", () => {
  let t: TestDatabase;
  let test: TestApp;
  let app: FastifyInstance;
  let tenant: Tenant;
  const double = accessDouble();
  const calls = handlerCalls();
  const raw: { json?: Buffer | undefined; form?: Buffer | undefined } = {};

  const routes: AnyRoute[] = [
    defineRoute({
      method: "POST",
      url: "/api/things",
      operationId: "createThing",
      summary: "Creates a thing",
      permission: PUBLIC,
      body: z.object({ name: z.string(), count: z.number().int() }),
      response: { 201: z.object({ name: z.string(), count: z.number() }) },
      handler: async (request, reply) => {
        calls.hit("createThing");
        return reply.code(201).send(request.body);
      },
    }),
    defineRoute({
      method: "POST",
      url: "/api/small",
      operationId: "postSmall",
      summary: "Accepts at most 64 bytes",
      permission: PUBLIC,
      bodyLimit: 64,
      body: z.object({ text: z.string() }),
      response: OK,
      handler: async () => {
        calls.hit("postSmall");
        return { ok: true };
      },
    }),
    defineRoute({
      method: "POST",
      url: "/api/conflict",
      operationId: "postConflict",
      summary: "Always conflicts",
      permission: PUBLIC,
      response: OK,
      handler: async () => {
        throw new HttpProblem("conflict", "the thing changed meanwhile");
      },
    }),
    defineRoute({
      method: "PUT",
      url: "/api/precondition",
      operationId: "putPrecondition",
      summary: "Always fails its precondition",
      permission: PUBLIC,
      response: OK,
      handler: async () => {
        throw new HttpProblem("precondition-failed");
      },
    }),
    defineRoute({
      method: "GET",
      url: "/api/boom",
      operationId: "getBoom",
      summary: "Fails with an internal error",
      permission: PUBLIC,
      response: OK,
      handler: async () => {
        throw new Error("secret internals");
      },
    }),
    defineRoute({
      method: "POST",
      url: "/api/form",
      operationId: "postForm",
      summary: "Takes a form",
      permission: PUBLIC,
      contentTypes: ["application/x-www-form-urlencoded"],
      rawBody: true,
      body: z.object({ name: z.string(), note: z.string() }),
      response: { 200: z.object({ name: z.string(), note: z.string() }) },
      handler: async (request) => {
        raw.form = request.rawBody;
        return request.body;
      },
    }),
    defineRoute({
      method: "POST",
      url: "/api/signed",
      operationId: "postSigned",
      summary: "Verifies a signature over the exact bytes",
      permission: PUBLIC,
      rawBody: true,
      body: z.object({ text: z.string() }),
      response: OK,
      handler: async (request) => {
        raw.json = request.rawBody;
        return { ok: true };
      },
    }),
    defineRoute({
      method: "POST",
      url: "/api/unsigned",
      operationId: "postUnsigned",
      summary: "Does not ask for the raw body",
      permission: PUBLIC,
      body: z.object({ text: z.string() }),
      response: { 200: z.object({ hasRaw: z.boolean() }) },
      handler: async (request) => ({ hasRaw: request.rawBody !== undefined }),
    }),
    defineRoute({
      method: "GET",
      url: "/api/me",
      operationId: "getMe",
      summary: "Who am I",
      permission: { kind: "authenticated" },
      response: { 200: z.object({ actorId: z.string() }) },
      handler: async (request) => {
        calls.hit("getMe");
        return { actorId: request.principal?.actorId ?? "" };
      },
    }),
    defineRoute({
      method: "GET",
      url: "/api/operator/things",
      operationId: "listOperatorThings",
      summary: "Operators only",
      permission: { kind: "operator" },
      response: OK,
      handler: async () => {
        calls.hit("listOperatorThings");
        return { ok: true };
      },
    }),
    defineRoute({
      method: "GET",
      url: "/api/tenants/:tenantId/things",
      operationId: "listTenantThings",
      summary: "Lists a tenant's things",
      permission: { kind: "tenant", permission: "things:read" },
      response: { 200: z.object({ tenantId: z.string() }) },
      handler: async (request) => {
        calls.hit("listTenantThings");
        return { tenantId: request.tenantId ?? "" };
      },
    }),
  ];

  beforeAll(async () => {
    t = await openTestDatabase("pglite");
    tenant = await createTestTenant(t.db, { slug: newSlug(), name: "Acme" }, manualClock());
    test = await buildTestApp({ db: t.db, routes, accessControl: double.access });
    app = test.app;
    await app.ready();
  });
  afterAll(async () => {
    await test?.close();
    await t?.close();
  });

  describe("problem+json", () => {
    it("400 validation lists each failing path, and the handler never runs", async () => {
      const response = await app.inject({ method: "POST", url: "/api/things", payload: { name: 7, count: "x" } });
      const body = expectProblem(response, "validation");
      expect(body.errors?.map((e) => e.path).sort()).toEqual(["body/count", "body/name"]);
      expect(body.instance).toBe("/api/things");
      expect(calls.of("createThing")).toBe(0);
    });

    it("the same route answers a valid body", async () => {
      const response = await app.inject({ method: "POST", url: "/api/things", payload: { name: "a", count: 2 } });
      expect(response.statusCode).toBe(201);
      expect(response.json()).toEqual({ name: "a", count: 2 });
    });

    it("400 for malformed JSON", async () => {
      const response = await app.inject({
        method: "POST",
        url: "/api/things",
        headers: { "content-type": "application/json" },
        payload: '{"name": "a", ',
      });
      expectProblem(response, "bad-request");
    });

    it("401 for an authenticated route without a principal (the default access control)", async () => {
      const defaults = await buildTestApp({ db: t.db, routes });
      try {
        expectProblem(await defaults.app.inject({ url: "/api/me" }), "unauthenticated");
        expectProblem(
          await defaults.app.inject({ url: `/api/tenants/${tenant.id}/things`, headers: { "x-test-user": "u1" } }),
          "unauthenticated",
        );
      } finally {
        await defaults.close();
      }
      expectProblem(await app.inject({ url: "/api/me" }), "unauthenticated");
      expect(calls.of("getMe")).toBe(0);
    });

    it("an operator route answers operators only: 401 anonymous, 403 a user, 200 an operator", async () => {
      expectProblem(await app.inject({ url: "/api/operator/things" }), "unauthenticated");
      expectProblem(await app.inject({ url: "/api/operator/things", headers: { "x-test-user": "u1" } }), "forbidden");
      expect(calls.of("listOperatorThings")).toBe(0);
      const response = await app.inject({ url: "/api/operator/things", headers: { "x-test-user": "operator" } });
      expect(response.statusCode).toBe(200);
      expect(calls.of("listOperatorThings")).toBe(1);
    });

    it("404 for a non-member, as for an unknown tenant; 403 for a member without the permission", async () => {
      const url = `/api/tenants/${tenant.id}/things`;
      const stranger = await app.inject({ url, headers: { "x-test-user": "stranger" } });
      const unknown = await app.inject({ url: `/api/tenants/${uuidv7()}/things`, headers: { "x-test-user": "u1" } });
      expect(expectProblem(stranger, "not-found").detail).toBe(expectProblem(unknown, "not-found").detail);
      expect(double.calls.allows).toContain(`stranger|${tenant.id}|things:read`);
      double.join("bystander", tenant.id);
      expectProblem(await app.inject({ url, headers: { "x-test-user": "bystander" } }), "forbidden");
      expect(calls.of("listTenantThings")).toBe(0);
    });

    it("404 for an unknown /api/ path, by GET and by POST", async () => {
      expectProblem(await app.inject({ method: "GET", url: "/api/nothing-here" }), "not-found");
      expectProblem(await app.inject({ method: "POST", url: "/api/nothing-here", payload: {} }), "not-found");
      expectProblem(await app.inject({ method: "DELETE", url: "/api" }), "not-found");
    });

    it("404 for an unknown tenant and for a tenant id that is not a UUID", async () => {
      const headers = { "x-test-user": "u1" };
      const unknown = await app.inject({ url: `/api/tenants/${uuidv7()}/things`, headers });
      expectProblem(unknown, "not-found");
      expectProblem(await app.inject({ url: "/api/tenants/not-a-uuid/things", headers }), "not-found");
      expectProblem(await app.inject({ url: "/api/tenants/1%27%20or%201=1/things", headers }), "not-found");
      expect(calls.of("listTenantThings")).toBe(0);
    });

    it("405 with an Allow header for a known path and a wrong method", async () => {
      const response = await app.inject({ method: "POST", url: "/health", payload: {} });
      expectProblem(response, "method-not-allowed");
      expect(response.headers.allow?.toString().split(", ").sort()).toEqual(["GET", "HEAD"]);
      const put = await app.inject({ method: "DELETE", url: "/api/things" });
      expectProblem(put, "method-not-allowed");
      expect(put.headers.allow).toBe("POST");
    });

    it("409 and 412 from a handler's HttpProblem", async () => {
      const conflict = expectProblem(await app.inject({ method: "POST", url: "/api/conflict" }), "conflict");
      expect(conflict.detail).toBe("the thing changed meanwhile");
      expectProblem(await app.inject({ method: "PUT", url: "/api/precondition" }), "precondition-failed");
    });

    it("413 for a body over the route's limit", async () => {
      const response = await app.inject({ method: "POST", url: "/api/small", payload: { text: "x".repeat(100) } });
      expectProblem(response, "payload-too-large");
      expect(calls.of("postSmall")).toBe(0);
      const fits = await app.inject({ method: "POST", url: "/api/small", payload: { text: "x" } });
      expect(fits.statusCode).toBe(200);
    });

    it("415 for text/plain or a form on a JSON route; a form route takes forms", async () => {
      const plain = await app.inject({
        method: "POST",
        url: "/api/things",
        headers: { "content-type": "text/plain" },
        payload: "name=a",
      });
      expectProblem(plain, "unsupported-media-type");
      const form = await app.inject({
        method: "POST",
        url: "/api/things",
        headers: { "content-type": "application/x-www-form-urlencoded" },
        payload: "name=a&count=1",
      });
      expectProblem(form, "unsupported-media-type");
      expect(form.headers.accept).toBe("application/json");
      expect(calls.of("createThing")).toBe(1);

      const accepted = await app.inject({
        method: "POST",
        url: "/api/form",
        headers: { "content-type": "application/x-www-form-urlencoded" },
        payload: "name=Ada&note=hello+world",
      });
      expect(accepted.statusCode).toBe(200);
      expect(accepted.json()).toEqual({ name: "Ada", note: "hello world" });
      const json = await app.inject({ method: "POST", url: "/api/form", payload: { name: "Ada", note: "n" } });
      expectProblem(json, "unsupported-media-type");
    });

    it("429 with retry-after once an address exceeds its limit", async () => {
      const limited = await buildTestApp({ db: t.db, routes, clock: manualClock(), rateLimit: { perAddress: 3 } });
      try {
        for (let i = 0; i < 3; i++) {
          const response = await limited.app.inject({ url: "/health" });
          expect(response.statusCode).toBe(200);
          expect(response.headers["ratelimit-remaining"]).toBe(String(2 - i));
        }
        const refused = await limited.app.inject({ url: "/health" });
        expectProblem(refused, "rate-limited");
        expect(Number(refused.headers["retry-after"])).toBeGreaterThan(0);
        expectProblem(await limited.app.inject({ url: "/api/nothing-here" }), "rate-limited");
        const other = await limited.app.inject({ url: "/health", remoteAddress: "198.51.100.4" });
        expect(other.statusCode).toBe(200);
      } finally {
        await limited.close();
      }
    });

    it("500 carries the request id and nothing of the internals", async () => {
      const response = await app.inject({ url: "/api/boom" });
      const body = expectProblem(response, "internal");
      expect(response.body).not.toContain("secret internals");
      expect(response.body).not.toMatch(/\bat \S+ \(|\.ts:\d+|stack/i);
      expect(Object.keys(body).sort()).toEqual(["instance", "requestId", "status", "title", "type"]);
    });

    it("/problems/:slug describes each problem type, and 404s an unknown one", async () => {
      const response = await app.inject({ url: "/problems/rate-limited" });
      expect(response.json()).toEqual({ type: "/problems/rate-limited", ...PROBLEM_TYPES["rate-limited"] });
      expectProblem(await app.inject({ url: "/problems/constructor" }), "not-found");
    });
  });

  describe("raw bodies", () => {
    it("a rawBody route receives the exact JSON bytes", async () => {
      const bytes = Buffer.from('{ "text" :\t"h\\u00e9llo — ü" ,\n "extra": [1, 2.50] }', "utf8");
      const response = await app.inject({
        method: "POST",
        url: "/api/signed",
        headers: { "content-type": "application/json; charset=utf-8" },
        payload: bytes,
      });
      expect(response.statusCode).toBe(200);
      expect(Buffer.isBuffer(raw.json)).toBe(true);
      expect(raw.json?.equals(bytes)).toBe(true);
    });

    it("a rawBody route receives the exact form bytes", async () => {
      const bytes = Buffer.from("name=Ad%C3%A1&note=a+b%26c&note2=", "utf8");
      const response = await app.inject({
        method: "POST",
        url: "/api/form",
        headers: { "content-type": "application/x-www-form-urlencoded" },
        payload: bytes,
      });
      expect(response.statusCode).toBe(200);
      expect(response.json()).toEqual({ name: "Adá", note: "a b&c" });
      expect(raw.form?.equals(bytes)).toBe(true);
    });

    it("a route that does not ask for the raw body does not get it", async () => {
      const response = await app.inject({ method: "POST", url: "/api/unsigned", payload: { text: "x" } });
      expect(response.json()).toEqual({ hasRaw: false });
    });
  });

  describe("security headers", () => {
    it("a strict CSP with a fresh nonce per response, no 'unsafe-inline', frames refused, no HSTS over http", async () => {
      const first = await app.inject({ url: "/health" });
      const second = await app.inject({ url: "/health" });
      const csp = String(first.headers["content-security-policy"]);
      const nonces = cspNonces(csp);
      expect(nonces.script).toMatch(/^[0-9a-f]{32}$/);
      expect(nonces.style).toMatch(/^[0-9a-f]{32}$/);
      const again = cspNonces(String(second.headers["content-security-policy"]));
      expect(again.script).not.toBe(nonces.script);
      expect(again.style).not.toBe(nonces.style);
      expect(csp).not.toContain("unsafe-inline");
      expect(csp).not.toContain("unsafe-eval");
      expect(csp).toMatch(/(^|;)\s*frame-ancestors 'none'\s*(;|$)/);
      expect(csp).toMatch(/(^|;)\s*object-src 'none'\s*(;|$)/);
      expect(first.headers["x-frame-options"]).toBe("DENY");
      expect(first.headers["x-content-type-options"]).toBe("nosniff");
      expect(first.headers["strict-transport-security"]).toBeUndefined();
      expect(csp).not.toContain("upgrade-insecure-requests");
    });

    it("problem responses carry the same headers", async () => {
      const response = await app.inject({ url: "/api/boom" });
      expect(String(response.headers["content-security-policy"])).toContain("frame-ancestors 'none'");
      expect(response.headers["x-content-type-options"]).toBe("nosniff");
    });

    for (const url of ["/", "/contacts/42", "/docs"]) {
      it(`GET ${url} uses exactly the nonces of its own CSP header`, async () => {
        const response = await app.inject({ url });
        expect(response.statusCode).toBe(200);
        expect(response.headers["content-type"]).toMatch(/^text\/html/);
        const nonces = cspNonces(String(response.headers["content-security-policy"]));
        const styles = tagNonces(response.body, "style");
        expect(styles.length).toBeGreaterThan(0);
        expect(styles).toEqual(styles.map(() => nonces.style));
        const scripts = tagNonces(response.body, "script");
        expect(scripts).toEqual(scripts.map(() => nonces.script));
        expect(response.body).not.toMatch(/\sstyle="/i);
        expect(response.body).not.toMatch(/\son[a-z]+="/i);
      });
    }
  });

  describe("kernel routes", () => {
    it("/health and /ready answer 200 on a migrated database", async () => {
      const health = await app.inject({ url: "/health" });
      expect(health.statusCode).toBe(200);
      expect(health.json()).toEqual({ status: "ok" });
      const ready = await app.inject({ url: "/ready" });
      expect(ready.statusCode).toBe(200);
      expect(ready.json()).toEqual({ status: "ready" });
    });

    it("/docs lists every documented operation with its permission", async () => {
      const response = await app.inject({ url: "/docs" });
      for (const id of ["createThing", "listTenantThings", "getHealth", "getReadiness", "getOpenApi"]) {
        expect(response.body).toContain(`id="${id}"`);
      }
      expect(response.body).toContain("tenant:things:read");
      expect(response.body).not.toContain('id="getWebApp"');
    });
  });

  describe("rate limiter hooks", () => {
    it("a deny hook refuses an address with 403, on unknown routes too; hooks see routeFound", async () => {
      const seen: RequestFacts[] = [];
      const rateLimiter = createRateLimiter({ db: t.db, clock: manualClock(), hashKey: randomBytes(32) });
      rateLimiter.addHook((facts) => {
        seen.push(facts);
        return facts.address === "203.0.113.9" ? "deny" : undefined;
      });
      const hooked = await buildTestApp({ db: t.db, routes, rateLimiter });
      try {
        const denied = { remoteAddress: "203.0.113.9" };
        expectProblem(await hooked.app.inject({ method: "POST", url: "/api/nope", ...denied }), "forbidden");
        expectProblem(await hooked.app.inject({ url: "/api/nope", ...denied }), "forbidden");
        expectProblem(await hooked.app.inject({ url: "/health", ...denied }), "forbidden");
        expect((await hooked.app.inject({ url: "/health", remoteAddress: "203.0.113.10" })).statusCode).toBe(200);
        expect(seen.map(({ method, path, routeFound }) => `${method} ${path} ${routeFound}`)).toEqual([
          "POST /api/nope false",
          "GET /api/nope false",
          "GET /health true",
          "GET /health true",
        ]);
        expect(seen[0]?.address).toBe("203.0.113.9");
      } finally {
        await hooked.close();
      }
    });

    it("an allow hook skips the limit", async () => {
      const rateLimiter = createRateLimiter({ db: t.db, clock: manualClock(), hashKey: randomBytes(32) });
      rateLimiter.addHook((facts) => (facts.path === "/health" ? "allow" : undefined));
      const hooked = await buildTestApp({ db: t.db, routes, rateLimiter, rateLimit: { perAddress: 1 } });
      try {
        for (let i = 0; i < 3; i++) expect((await hooked.app.inject({ url: "/health" })).statusCode).toBe(200);
        expect((await hooked.app.inject({ url: "/ready" })).statusCode).toBe(200);
        expectProblem(await hooked.app.inject({ url: "/ready" }), "rate-limited");
      } finally {
        await hooked.close();
      }
    });
  });

  describe("OpenAPI document", () => {
    it("is a valid OpenAPI 3.1 document in which every operation has an id and a permission", async () => {
      const response = await app.inject({ url: "/openapi.json" });
      expect(response.statusCode).toBe(200);
      const doc = response.json();
      expect(doc.openapi).toMatch(/^3\.1\./);
      const ids: string[] = [];
      for (const [path, item] of Object.entries(doc.paths as Record<string, Record<string, unknown>>)) {
        for (const [method, op] of Object.entries(item)) {
          const operation = op as { operationId?: string; "x-charter-permission"?: string };
          expect(operation.operationId, `${method} ${path}`).toMatch(/^[a-zA-Z]+$/);
          expect(operation["x-charter-permission"], `${method} ${path}`).toBeTruthy();
          ids.push(operation.operationId as string);
        }
      }
      expect(new Set(ids).size).toBe(ids.length);
      expect(ids).toEqual(expect.arrayContaining(["createThing", "postForm", "listTenantThings", "getHealth"]));
      expect(ids).not.toContain("getWebApp");
      expect(doc.paths["/api/tenants/{tenantId}/things"].get["x-charter-permission"]).toBe("tenant:things:read");
      expect(Object.keys(doc.paths["/api/form"].post.requestBody.content)).toEqual([
        "application/x-www-form-urlencoded",
      ]);

      const validator = new Validator();
      const result = await validator.validate(doc);
      expect(result.errors).toBeUndefined();
      expect(result.valid).toBe(true);
    });

    it("the validator does reject a broken document", async () => {
      const doc = (await app.inject({ url: "/openapi.json" })).json();
      doc.paths["/health"].get.responses = { 200: { content: {} } };
      const result = await new Validator().validate(doc);
      expect(result.valid).toBe(false);
    });

    it("the kernel's own document (the real composition) is valid", async () => {
      const kernelOnly = await buildTestApp({ db: t.db });
      try {
        const doc = (await kernelOnly.app.inject({ url: "/openapi.json" })).json();
        const result = await new Validator().validate(doc);
        expect(result.errors).toBeUndefined();
        expect(result.valid).toBe(true);
      } finally {
        await kernelOnly.close();
      }
    });
  });
});

describe.each(DATABASE_KINDS)("route permissions on %s (T2)", (kind) => {
  let t: TestDatabase;
  let test: TestApp;
  let app: FastifyInstance;
  let tenant: Tenant;
  let other: Tenant;
  const clock = manualClock();
  const double = accessDouble();
  const calls = handlerCalls();
  const seenTenant: (string | undefined)[] = [];
  const records: unknown[] = [];

  const routes: AnyRoute[] = [
    defineRoute({
      method: "GET",
      url: "/api/tenants/:tenantId/notes",
      operationId: "listNotes",
      summary: "Lists notes",
      permission: { kind: "tenant", permission: "notes:read" },
      response: { 200: z.object({ tenantId: z.string(), actorId: z.string() }) },
      handler: async (request) => {
        calls.hit("listNotes");
        seenTenant.push(request.tenantId);
        return { tenantId: request.tenantId ?? "", actorId: request.principal?.actorId ?? "" };
      },
    }),
    defineRoute({
      method: "GET",
      url: "/api/tenants/:tenantId/notes/:noteId",
      operationId: "getNote",
      summary: "Reads a note",
      permission: {
        kind: "tenant",
        permission: "notes:read",
        record: {
          name: "shared notes only",
          allows: async (principal: Principal, grant: Grant, tenantId: string, params: unknown) => {
            records.push({ actorId: principal.actorId, grantActor: grant.actorId, tenantId, params });
            return (params as { noteId: string }).noteId === "shared";
          },
        },
      },
      params: z.object({ tenantId: z.string(), noteId: z.string() }),
      response: { 200: z.object({ noteId: z.string() }) },
      handler: async (request) => {
        calls.hit("getNote");
        return { noteId: request.params.noteId };
      },
    }),
    defineRoute({
      method: "GET",
      url: "/api/tenants/:tenantId/reports",
      operationId: "listReports",
      summary: "Lists reports",
      permission: { kind: "tenant", permission: "reports:read" },
      feature: "reports",
      response: OK,
      handler: async () => {
        calls.hit("listReports");
        return { ok: true };
      },
    }),
    defineRoute({
      method: "POST",
      url: "/api/tenants/:tenantId/webhooks/inbound",
      operationId: "receiveWebhook",
      summary: "Receives a signed webhook",
      permission: {
        kind: "public-tenant",
        credential: {
          name: "webhook signature",
          verify: async (request, tenantId) => request.headers["x-signature"] === `good-for-${tenantId}`,
        },
      },
      body: z.object({ event: z.string() }),
      response: { 200: z.object({ tenantId: z.string(), principal: z.null() }) },
      handler: async (request) => {
        calls.hit("receiveWebhook");
        return { tenantId: request.tenantId ?? "", principal: null };
      },
    }),
    defineRoute({
      method: "GET",
      url: "/api/me",
      operationId: "getMe",
      summary: "Who am I",
      permission: { kind: "authenticated" },
      response: { 200: z.object({ actorId: z.string() }) },
      handler: async (request) => {
        calls.hit("getMe");
        return { actorId: request.principal?.actorId ?? "" };
      },
    }),
  ];

  beforeAll(async () => {
    t = await openTestDatabase(kind);
    tenant = await createTestTenant(t.db, { slug: newSlug(), name: "Acme" }, clock);
    other = await createTestTenant(t.db, { slug: newSlug(), name: "Other" }, clock);
    double.grant("alice", tenant.id, "notes:read");
    double.grant("alice", tenant.id, "reports:read");
    test = await buildTestApp({ db: t.db, routes, accessControl: double.access, clock });
    app = test.app;
    await app.ready();
  });
  afterAll(async () => {
    await test?.close();
    await t?.close();
  });

  const alice = { "x-test-user": "alice" };

  it("refuses a tenant route with 401 when nobody is signed in, before looking at the tenant", async () => {
    const before = double.calls.allows.length;
    expectProblem(await app.inject({ url: `/api/tenants/${tenant.id}/notes` }), "unauthenticated");
    expectProblem(await app.inject({ url: `/api/tenants/${uuidv7()}/notes` }), "unauthenticated");
    expect(double.calls.allows.length).toBe(before);
    expect(calls.of("listNotes")).toBe(0);
  });

  it("answers a member with the permission, and the handler sees the tenant and principal", async () => {
    const response = await app.inject({ url: `/api/tenants/${tenant.id}/notes`, headers: alice });
    expect(response.statusCode).toBe(200);
    expect(response.json()).toEqual({ tenantId: tenant.id, actorId: "alice" });
    expect(seenTenant).toEqual([tenant.id]);
    expect(calls.of("listNotes")).toBe(1);
  });

  it("refuses the same principal in another tenant with 404", async () => {
    expectProblem(await app.inject({ url: `/api/tenants/${other.id}/notes`, headers: alice }), "not-found");
    expect(double.calls.allows).toContain(`alice|${other.id}|notes:read`);
    expect(calls.of("listNotes")).toBe(1);
  });

  it("answers 404 for a feature the tenant has off, and 200 once it is switched on", async () => {
    const url = `/api/tenants/${tenant.id}/reports`;
    expectProblem(await app.inject({ url, headers: alice }), "not-found");
    expect(calls.of("listReports")).toBe(0);
    await t.db.withTenant({ tenantId: tenant.id }, (tx) =>
      setFeature(
        tx,
        clock,
        { tenantId: tenant.id, feature: "reports", enabled: true, changedBy: null },
        createTestAudit(t.db),
      ),
    );
    const on = await app.inject({ url, headers: alice });
    expect(on.statusCode).toBe(200);
    expect(calls.of("listReports")).toBe(1);
    await t.db.withTenant({ tenantId: tenant.id }, (tx) =>
      setFeature(
        tx,
        clock,
        { tenantId: tenant.id, feature: "reports", enabled: false, changedBy: null },
        createTestAudit(t.db),
      ),
    );
    expectProblem(await app.inject({ url, headers: alice }), "not-found");
    expect(calls.of("listReports")).toBe(1);
  });

  it("a feature switched on in one tenant stays off in another", async () => {
    await t.db.withTenant({ tenantId: tenant.id }, (tx) =>
      setFeature(
        tx,
        clock,
        { tenantId: tenant.id, feature: "reports", enabled: true, changedBy: null },
        createTestAudit(t.db),
      ),
    );
    double.grant("alice", other.id, "reports:read");
    expectProblem(await app.inject({ url: `/api/tenants/${other.id}/reports`, headers: alice }), "not-found");
    expect((await app.inject({ url: `/api/tenants/${tenant.id}/reports`, headers: alice })).statusCode).toBe(200);
  });

  it("a record check that refuses answers 404, as if the record did not exist", async () => {
    const hidden = await app.inject({ url: `/api/tenants/${tenant.id}/notes/private`, headers: alice });
    expectProblem(hidden, "not-found");
    expect(calls.of("getNote")).toBe(0);
    const shared = await app.inject({ url: `/api/tenants/${tenant.id}/notes/shared`, headers: alice });
    expect(shared.statusCode).toBe(200);
    expect(shared.json()).toEqual({ noteId: "shared" });
    expect(calls.of("getNote")).toBe(1);
    expect(records.at(-1)).toEqual({
      actorId: "alice",
      grantActor: "m-alice",
      tenantId: tenant.id,
      params: { tenantId: tenant.id, noteId: "shared" },
    });
    // The tenant permission comes first: the record check never runs for a member without it (alice is a
    // member of the other tenant, with reports:read only).
    const before = records.length;
    expectProblem(await app.inject({ url: `/api/tenants/${other.id}/notes/shared`, headers: alice }), "forbidden");
    expect(records.length).toBe(before);
  });

  it("a public-tenant route needs its credential: 401 without, 200 with, and no principal", async () => {
    const url = `/api/tenants/${tenant.id}/webhooks/inbound`;
    const bad = await app.inject({
      method: "POST",
      url,
      headers: { "x-signature": "forged" },
      payload: { event: "x" },
    });
    const body = expectProblem(bad, "unauthenticated");
    expect(body.detail).toContain("webhook signature");
    expect(calls.of("receiveWebhook")).toBe(0);
    const signed = { "x-signature": `good-for-${tenant.id}` };
    const good = await app.inject({ method: "POST", url, headers: signed, payload: { event: "x" } });
    expect(good.statusCode).toBe(200);
    expect(good.json()).toEqual({ tenantId: tenant.id, principal: null });
    expect(calls.of("receiveWebhook")).toBe(1);
    // A credential for one tenant does not open another, and an unknown tenant is 404 before any check.
    const replayed = await app.inject({
      method: "POST",
      url: `/api/tenants/${other.id}/webhooks/inbound`,
      headers: signed,
      payload: { event: "x" },
    });
    expectProblem(replayed, "unauthenticated");
    const unknown = await app.inject({
      method: "POST",
      url: `/api/tenants/${uuidv7()}/webhooks/inbound`,
      headers: signed,
      payload: { event: "x" },
    });
    expectProblem(unknown, "not-found");
    expect(calls.of("receiveWebhook")).toBe(1);
  });

  it("refuses before reading the body: an anonymous caller learns nothing of the schema", async () => {
    const response = await app.inject({
      method: "POST",
      url: `/api/tenants/${tenant.id}/webhooks/inbound`,
      payload: { wrong: true },
    });
    expectProblem(response, "unauthenticated");
  });

  it("an authenticated route answers any principal and nobody else", async () => {
    expectProblem(await app.inject({ url: "/api/me" }), "unauthenticated");
    const response = await app.inject({ url: "/api/me", headers: { "x-test-user": "bob" } });
    expect(response.json()).toEqual({ actorId: "bob" });
    expect(calls.of("getMe")).toBe(1);
  });
});

describe("fail closed (T2)", () => {
  let t: TestDatabase;
  beforeAll(async () => {
    t = await openTestDatabase("pglite");
  });
  afterAll(() => t?.close());

  const base = defineRoute({
    method: "GET",
    url: "/api/widgets",
    operationId: "listWidgets",
    summary: "Lists widgets",
    permission: PUBLIC,
    response: OK,
    handler: async () => ({ ok: true }),
  });

  it("buildApp refuses a route that declares no permission", async () => {
    const { permission: _, ...undeclared } = base;
    await expect(buildTestApp({ db: t.db, routes: [undeclared as unknown as AnyRoute] })).rejects.toThrow(
      /GET \/api\/widgets declares no permission/,
    );
  });

  it("buildApp refuses a permission it does not know, and a tenant permission without a name", async () => {
    const unknown = { ...base, permission: { kind: "admin" } } as unknown as AnyRoute;
    await expect(buildTestApp({ db: t.db, routes: [unknown] })).rejects.toThrow(/permission/);
    const unnamed = {
      ...base,
      url: "/api/tenants/:tenantId/widgets",
      permission: { kind: "tenant" },
    } as unknown as AnyRoute;
    await expect(buildTestApp({ db: t.db, routes: [unnamed] })).rejects.toThrow(/permission/);
    const noCredential = {
      ...base,
      url: "/api/tenants/:tenantId/widgets",
      permission: { kind: "public-tenant" },
    } as unknown as AnyRoute;
    await expect(buildTestApp({ db: t.db, routes: [noCredential] })).rejects.toThrow(/credential/);
  });

  it("buildApp refuses a tenant route whose path has no :tenantId", async () => {
    const route = { ...base, permission: { kind: "tenant", permission: "widgets:read" } } as AnyRoute;
    await expect(buildTestApp({ db: t.db, routes: [route] })).rejects.toThrow(/has no :tenantId/);
    const publicTenant = {
      ...base,
      permission: { kind: "public-tenant", credential: { name: "token", verify: async () => true } },
    } as AnyRoute;
    await expect(buildTestApp({ db: t.db, routes: [publicTenant] })).rejects.toThrow(/has no :tenantId/);
  });

  it("buildApp refuses a duplicate or missing operationId", async () => {
    const twin = { ...base, url: "/api/widgets-again" };
    await expect(buildTestApp({ db: t.db, routes: [base, twin] })).rejects.toThrow(/listWidgets is used twice/);
    await expect(buildTestApp({ db: t.db, routes: [{ ...base, operationId: "" }] })).rejects.toThrow(/operationId/);
    const kernelTwin = { ...base, url: "/api/health", operationId: "getHealth" };
    await expect(buildTestApp({ db: t.db, routes: [kernelTwin] })).rejects.toThrow(/getHealth is used twice/);
  });

  it("a route added straight to Fastify stops start-up", async () => {
    const test = await buildTestApp({ db: t.db, routes: [base] });
    try {
      expect(() => test.app.get("/api/sneaky", async () => ({ secret: true }))).toThrow(
        /GET \/api\/sneaky was added without a declared permission/,
      );
      test.app.register(async (child) => {
        child.post("/api/sneaky-plugin", async () => ({ secret: true }));
      });
      await expect(test.app.ready()).rejects.toThrow(
        /POST \/api\/sneaky-plugin was added without a declared permission/,
      );
    } finally {
      await test.close();
    }
  });

  it("every route the real composition registers carries its registry entry with a permission and an operationId", async () => {
    const test = await buildTestApp({ db: t.db });
    const found: { method: string; url: string; route: AnyRoute | undefined }[] = [];
    // Answer before any route runs: this walk only looks at what each registered route is.
    test.app.addHook("onRequest", async (request, reply) => {
      found.push({
        method: request.method,
        url: request.routeOptions.url ?? "",
        route: request.routeOptions.config.charterRoute,
      });
      return reply.code(204).send();
    });
    try {
      await test.app.ready();
      const tree = test.app.printRoutes({ commonPrefix: false });
      const registered = [...tree.matchAll(/[─└├│\s]*(\S+) \(([A-Z, ]+)\)/g)].flatMap(([, path, methods]) =>
        (methods ?? "").split(", ").map((method) => ({ method, path: path === "*" ? "/*" : (path ?? "") })),
      );
      expect(registered.length).toBeGreaterThanOrEqual(12);
      for (const { method, path } of registered) {
        const url = path.replaceAll(/:[A-Za-z]+/g, "x").replace("*", "anything");
        await test.app.inject({ method: method as "GET", url });
      }
      expect(found.map((f) => `${f.method} ${f.url}`).sort()).toEqual(
        registered.map((r) => `${r.method} ${r.path}`).sort(),
      );
      const ids = new Set<string>();
      for (const { method, url, route } of found) {
        expect(route, `${method} ${url}`).toBeDefined();
        expect(route?.url).toBe(url);
        expect(["public", "public-tenant", "authenticated", "tenant"]).toContain(route?.permission.kind);
        expect(route?.operationId, `${method} ${url}`).toMatch(/^[a-zA-Z]+$/);
        ids.add(`${method === "HEAD" ? "GET" : method} ${route?.operationId}`);
      }
      expect(ids.size).toBe(found.length / 2);
    } finally {
      await test.close();
    }
  });
});

describe("graceful shutdown", () => {
  let t: TestDatabase;
  beforeAll(async () => {
    t = await openTestDatabase("pglite");
  });
  afterAll(() => t?.close());

  it("finishes the request in flight and refuses new connections", async () => {
    let release = () => {};
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    let entered = () => {};
    const started = new Promise<void>((resolve) => {
      entered = resolve;
    });
    const slow = defineRoute({
      method: "GET",
      url: "/api/slow",
      operationId: "getSlow",
      summary: "Waits until released",
      permission: PUBLIC,
      response: { 200: z.object({ done: z.boolean() }) },
      handler: async () => {
        entered();
        await gate;
        return { done: true };
      },
    });
    const test = await buildTestApp({ db: t.db, routes: [slow] });
    let closing: Promise<void> | undefined;
    try {
      await test.app.listen({ host: "127.0.0.1", port: 0 });
      const { port } = test.app.server.address() as AddressInfo;
      await tcpConnect(port);
      const inFlight = fetch(`http://127.0.0.1:${port}/api/slow`);
      await started;
      closing = test.app.close();
      await vi.waitFor(() => expect(test.app.server.listening).toBe(false));
      await expect(tcpConnect(port)).rejects.toMatchObject({ code: "ECONNREFUSED" });
      release();
      const response = await inFlight;
      expect(response.status).toBe(200);
      expect(await response.json()).toEqual({ done: true });
      // The client's keep-alive connection is told to go, so close() does not wait out its idle timeout.
      expect(response.headers.get("connection")).toBe("close");
      await closing;
      await expect(tcpConnect(port)).rejects.toMatchObject({ code: "ECONNREFUSED" });
    } finally {
      release();
      if (closing) {
        await closing;
        await test.rateLimiter.close();
      } else {
        await test.close();
      }
    }
  });
});

describe("HTTP kernel: cross-site requests and tenant status", () => {
  let t: TestDatabase;
  let test: TestApp;
  let tenant: Tenant;
  const calls = handlerCalls();
  // A member whose tenant refuses them for its status: the access control names the problem type.
  const access: AccessControl = {
    principal: async (request) => (request.headers["x-test-user"] ? { kind: "user", actorId: "u1" } : null),
    authorize: async () => ({ outcome: "forbidden", slug: "tenant-read-only", detail: "read-only" }),
  };
  const routes: AnyRoute[] = [
    defineRoute({
      method: "POST",
      url: "/api/sign-in",
      operationId: "postSignIn",
      summary: "A public form",
      permission: PUBLIC,
      response: OK,
      handler: async () => {
        calls.hit("postSignIn");
        return { ok: true };
      },
    }),
    defineRoute({
      method: "GET",
      url: "/api/page",
      operationId: "getPage",
      summary: "A public read",
      permission: PUBLIC,
      response: OK,
      handler: async () => ({ ok: true }),
    }),
    defineRoute({
      method: "POST",
      url: "/api/tenants/:tenantId/inbound",
      operationId: "postInbound",
      summary: "Takes its own credential",
      permission: { kind: "public-tenant", credential: { name: "token", verify: async () => true } },
      response: OK,
      handler: async () => ({ ok: true }),
    }),
    defineRoute({
      method: "DELETE",
      url: "/api/tenants/:tenantId/things",
      operationId: "deleteThings",
      summary: "A write",
      permission: { kind: "tenant", permission: "things:write" },
      response: OK,
      handler: async () => ({ ok: true }),
    }),
  ];

  beforeAll(async () => {
    t = await openTestDatabase("pglite");
    tenant = await createTestTenant(t.db, { slug: newSlug(), name: "Acme" }, manualClock());
    test = await buildTestApp({ db: t.db, routes, accessControl: access });
  });
  afterAll(async () => {
    await test?.close();
    await t?.close();
  });

  it("refuses an unsafe request a browser labels as coming from anywhere but this origin, before the handler", async () => {
    for (const site of ["cross-site", "same-site", "none"]) {
      const response = await test.app.inject({
        method: "POST",
        url: "/api/sign-in",
        headers: { "sec-fetch-site": site },
      });
      expectProblem(response, "cross-site-request");
    }
    expect(calls.of("postSignIn")).toBe(0);
    const same = await test.app.inject({
      method: "POST",
      url: "/api/sign-in",
      headers: { "sec-fetch-site": "same-origin" },
    });
    expect(same.statusCode).toBe(200);
    // Without the header the kernel cannot tell; the identity module judges by the cookie and Origin.
    expect((await test.app.inject({ method: "POST", url: "/api/sign-in" })).statusCode).toBe(200);
    expect(calls.of("postSignIn")).toBe(2);
  });

  it("serves cross-site reads, and public-tenant routes, which carry their own credential", async () => {
    const read = await test.app.inject({ url: "/api/page", headers: { "sec-fetch-site": "cross-site" } });
    expect(read.statusCode).toBe(200);
    const inbound = await test.app.inject({
      method: "POST",
      url: `/api/tenants/${tenant.id}/inbound`,
      headers: { "sec-fetch-site": "cross-site" },
    });
    expect(inbound.statusCode).toBe(200);
  });

  it("answers a refusal for the tenant's status with the problem type the access control names", async () => {
    const response = await test.app.inject({
      method: "DELETE",
      url: `/api/tenants/${tenant.id}/things`,
      headers: { "x-test-user": "u1", "sec-fetch-site": "same-origin" },
    });
    expect(expectProblem(response, "tenant-read-only").detail).toBe("read-only");
  });
});
