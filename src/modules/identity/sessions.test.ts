import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";
import { loadConfig } from "../../config.ts";
import { manualClock } from "../../platform/clock.ts";
import { buildApp } from "../../platform/http/app.ts";
import { HttpProblem } from "../../platform/http/problem.ts";
import { createIdentity } from "./index.ts";
import {
  bumpPrivilegeEpoch,
  createSession,
  describeDevice,
  isRecentlyAuthenticated,
  RECENT_AUTHENTICATION_MS,
  requireRecentAuthentication,
  resolveSession,
  type SessionPrincipal,
} from "./sessions.ts";
import { createIdentityTestDeps, createTestUser, randomAddress } from "./testing.ts";

describe("describeDevice", () => {
  it("keeps a browser and system summary, never the User-Agent string", () => {
    expect(
      describeDevice(
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/138.0 Safari/537.36 Edg/138.0",
      ),
    ).toBe("Edge on Windows");
    expect(
      describeDevice(
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_5 like Mac OS X) AppleWebKit/605.1.15 Version/18.5 Mobile Safari/604.1",
      ),
    ).toBe("Safari on iOS");
    expect(describeDevice("Mozilla/5.0 (Linux; Android 15) AppleWebKit/537.36 Chrome/138.0 Mobile Safari/537.36")).toBe(
      "Chrome on Android",
    );
    expect(describeDevice("curl/8.5.0")).toBe("Unknown device");
    expect(describeDevice(undefined)).toBeNull();
  });
});

const slug = (error: unknown) => (error instanceof HttpProblem ? error.slug : String(error));

describe.each(DATABASE_KINDS)("session service on %s", (kind) => {
  let t: TestDatabase;
  const clock = manualClock("2026-04-01T09:00:00.000Z");
  let deps: ReturnType<typeof createIdentityTestDeps>;

  beforeAll(async () => {
    t = await openTestDatabase(kind);
    deps = createIdentityTestDeps(t.db, clock);
  });
  afterAll(async () => {
    await deps?.rateLimiter.close();
    await t?.close();
  });

  const newSession = async () => {
    const user = await createTestUser(deps, { email: `s-${randomBytes(4).toString("hex")}@example.com` });
    const session = await t.db.withPlatform((tx) =>
      createSession(tx, { userId: user.id, factor: { method: "password" }, now: clock.now() }),
    );
    return { user, session };
  };

  it("counts recent authentication for 10 minutes after a factor, through the current token only", async () => {
    const { user, session } = await newSession();
    const principal: SessionPrincipal = {
      kind: "user",
      actorId: user.id,
      userId: user.id,
      sessionId: session.id,
      viaReplacedToken: false,
      factors: [{ method: "password", at: clock.now().toISOString() }],
      signedInAt: clock.now(),
    };
    await expect(requireRecentAuthentication(deps, principal)).resolves.toBeUndefined();
    await expect(
      requireRecentAuthentication(deps, { ...principal, viaReplacedToken: true } as SessionPrincipal).catch(slug),
    ).resolves.toBe("reauthentication-required");
    await expect(requireRecentAuthentication(deps, { kind: "api-key", actorId: session.id }).catch(slug)).resolves.toBe(
      "forbidden",
    );
    clock.advance(RECENT_AUTHENTICATION_MS - 1);
    expect(await t.db.withPlatform((tx) => isRecentlyAuthenticated(tx, session.id, clock.now()))).toBe(true);
    // Inside an open transaction, as the callers that change something do.
    await t.db.withPlatform((tx) => requireRecentAuthentication(deps, principal, tx));
    clock.advance(1);
    expect(await t.db.withPlatform((tx) => isRecentlyAuthenticated(tx, session.id, clock.now()))).toBe(false);
    await expect(requireRecentAuthentication(deps, principal).catch(slug)).resolves.toBe("reauthentication-required");
  });

  it("rotates once when two requests race with the token of an outdated epoch", async () => {
    const { user, session } = await newSession();
    await t.db.withPlatform((tx) => bumpPrivilegeEpoch(tx, user.id));
    const [a, b] = await Promise.all([
      resolveSession(deps, session.token, undefined),
      resolveSession(deps, session.token, undefined),
    ]);
    const rotated = [a, b].map((r) => (r.outcome === "valid" ? r.rotatedToken : "refused"));
    expect(rotated.filter((token) => token === "refused")).toEqual([]);
    expect(rotated.filter((token) => token !== undefined)).toHaveLength(1);
    const tokens = await t.db.withPlatform((tx) =>
      tx.selectFrom("session_tokens").selectAll().where("session_id", "=", session.id).execute(),
    );
    expect(tokens).toHaveLength(2);
    expect(tokens.filter((token) => token.replaced_at === null)).toHaveLength(1);
  });
});

describe.each(DATABASE_KINDS)("what sign-in logs on %s", (kind) => {
  let t: TestDatabase;
  const clock = manualClock("2026-04-01T09:00:00.000Z");

  beforeAll(async () => {
    t = await openTestDatabase(kind);
  });
  afterAll(() => t?.close());

  it("never writes a password, token or address to the log, even at trace level", async () => {
    const deps = createIdentityTestDeps(t.db, clock);
    const identity = createIdentity(deps);
    const lines: string[] = [];
    const app = await buildApp({
      config: { ...loadConfig({}), logLevel: "trace" },
      db: t.db,
      clock,
      rateLimiter: deps.rateLimiter,
      routes: identity.routes,
      accessControl: identity.accessControl,
      log: { write: (line) => lines.push(line) },
    });
    try {
      const user = await createTestUser(deps, { email: "logged@example.com" });
      const attempt = (password: string) =>
        app.inject({
          method: "POST",
          url: "/api/v1/sessions",
          remoteAddress: randomAddress(),
          headers: { "sec-fetch-site": "same-origin" },
          payload: { email: user.email, password },
        });
      expect((await attempt("a wrong secret phrase")).statusCode).toBe(401);
      const ok = await attempt(user.password);
      expect(ok.statusCode).toBe(200);
      const token = ok.cookies[0]?.value ?? "";
      const who = await app.inject({
        url: "/api/v1/sessions/current",
        headers: { cookie: `${ok.cookies[0]?.name}=${token}` },
      });
      expect(who.statusCode).toBe(200);
      const log = lines.join("");
      expect(lines.length).toBeGreaterThan(0);
      expect(log).toContain("/api/v1/sessions");
      for (const secret of ["a wrong secret phrase", user.password, token, user.email]) {
        expect(log).not.toContain(secret);
      }
    } finally {
      await app.close();
      await deps.rateLimiter.close();
    }
  });
});
