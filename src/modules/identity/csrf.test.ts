import type { FastifyRequest } from "fastify";
import { describe, expect, it } from "vitest";
import { DATABASE_KINDS } from "../../../test/support/databases.ts";
import { manualClock } from "../../platform/clock.ts";
import { HttpProblem } from "../../platform/http/problem.ts";
import { assertSameOrigin } from "./csrf.ts";
import { createTestUser, signIn, TEST_PUBLIC_URL, useIdentityTestApp } from "./testing.ts";

const request = (method: string, headers: Record<string, string>) => ({ method, headers }) as unknown as FastifyRequest;

function verdict(method: string, headers: Record<string, string>, cookie: boolean): string {
  try {
    assertSameOrigin(request(method, headers), TEST_PUBLIC_URL, cookie);
    return "accepted";
  } catch (error) {
    if (error instanceof HttpProblem) return error.slug;
    throw error;
  }
}

describe("assertSameOrigin", () => {
  it("takes only same-origin from browsers that label their requests", () => {
    expect(verdict("POST", { "sec-fetch-site": "same-origin" }, true)).toBe("accepted");
    for (const site of ["same-site", "cross-site", "none"]) {
      expect(verdict("POST", { "sec-fetch-site": site }, true)).toBe("cross-site-request");
      expect(verdict("DELETE", { "sec-fetch-site": site }, false)).toBe("cross-site-request");
    }
  });

  it("judges unlabelled requests by Origin, and takes a request with neither only without the cookie", () => {
    expect(verdict("PATCH", { origin: "https://charter.test" }, true)).toBe("accepted");
    expect(verdict("PATCH", { origin: "https://evil.example" }, true)).toBe("cross-site-request");
    expect(verdict("PATCH", { origin: "https://evil.example" }, false)).toBe("cross-site-request");
    expect(verdict("PUT", { origin: "null" }, false)).toBe("cross-site-request");
    expect(verdict("PUT", { origin: "http://charter.test" }, true)).toBe("cross-site-request");
    expect(verdict("POST", {}, false)).toBe("accepted");
    expect(verdict("POST", {}, true)).toBe("cross-site-request");
  });

  it("lets safe methods through: they change nothing", () => {
    expect(verdict("GET", { "sec-fetch-site": "cross-site" }, true)).toBe("accepted");
    expect(verdict("HEAD", { origin: "https://evil.example" }, true)).toBe("accepted");
  });
});

describe.each(DATABASE_KINDS)("cross-site sign-in and sign-out on %s", (kind) => {
  const clock = manualClock("2026-04-01T09:00:00.000Z");
  const world = useIdentityTestApp(kind, clock);

  it("refuses login CSRF: sign-in from another site, labelled or by Origin, with or without a cookie", async () => {
    const user = await createTestUser(world.deps, { email: "csrf-sign-in@example.com" });
    const payload = { email: user.email, password: user.password };
    const attempt = (headers: Record<string, string>) =>
      world.app.app.inject({ method: "POST", url: "/api/v1/sessions", headers, payload });
    const forged: Record<string, string>[] = [
      { "sec-fetch-site": "cross-site" },
      { "sec-fetch-site": "same-site" },
      { origin: "https://evil.example" },
    ];
    for (const headers of forged) {
      const response = await attempt(headers);
      expect(response.statusCode).toBe(403);
      expect(response.json().type).toBe("/problems/cross-site-request");
      expect(response.headers["set-cookie"]).toBeUndefined();
    }
    const session = await signIn(world.app, user.email, user.password);
    expect((await attempt({ cookie: session.cookie })).statusCode).toBe(403);
    // An API client (no cookie, no Origin) and an older browser on our own page are both fine.
    expect((await attempt({})).statusCode).toBe(200);
    expect((await attempt({ origin: "https://charter.test" })).statusCode).toBe(200);
  });

  it("refuses a forged sign-out, and serves the same one from our own page", async () => {
    const user = await createTestUser(world.deps, { email: "csrf-sign-out@example.com" });
    const session = await signIn(world.app, user.email, user.password);
    const signOut = (headers: Record<string, string>) =>
      world.app.app.inject({
        method: "DELETE",
        url: "/api/v1/sessions/current",
        headers: { cookie: session.cookie, ...headers },
      });
    expect((await signOut({ "sec-fetch-site": "cross-site" })).statusCode).toBe(403);
    expect((await signOut({ origin: "https://evil.example" })).statusCode).toBe(403);
    expect((await signOut({})).statusCode).toBe(403);
    const who = await world.app.app.inject({ url: "/api/v1/sessions/current", headers: { cookie: session.cookie } });
    expect(who.statusCode).toBe(200);
    expect((await signOut({ origin: "https://charter.test" })).statusCode).toBe(204);
  });

  it("refuses a forged sign-up and operator setup from an unlabelled browser (by Origin), creating nothing", async () => {
    const email = "csrf-sign-up@example.com";
    const forged = { origin: "https://evil.example" };
    const signUp = await world.app.app.inject({
      method: "POST",
      url: "/api/v1/accounts",
      headers: forged,
      payload: { email, displayName: "Forged", password: "a long and unguessable passphrase 42" },
    });
    expect(signUp.json().type).toBe("/problems/cross-site-request");
    const setup = await world.app.app.inject({
      method: "POST",
      url: "/api/v1/operator/setup",
      headers: forged,
      payload: {
        token: "x".repeat(43),
        email,
        displayName: "Forged",
        password: "a long and unguessable passphrase 42",
      },
    });
    expect(setup.json().type).toBe("/problems/cross-site-request");
    const users = await world.t.db.withPlatform((tx) => tx.selectFrom("users").select("id").execute());
    const created = await world.app.app.inject({
      method: "POST",
      url: "/api/v1/accounts",
      headers: { origin: "https://charter.test" },
      payload: { email, displayName: "Real", password: "a long and unguessable passphrase 42" },
    });
    expect(created.statusCode).toBe(202);
    const after = await world.t.db.withPlatform((tx) => tx.selectFrom("users").select("id").execute());
    expect(after.length).toBe(users.length + 1);
  });
});
