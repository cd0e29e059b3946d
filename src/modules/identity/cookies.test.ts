import type { FastifyReply, FastifyRequest } from "fastify";
import { describe, expect, it } from "vitest";
import { clearSessionCookie, readCookie, sessionCookieName, setSessionCookie } from "./cookies.ts";

function replyDouble() {
  const headers: Record<string, string> = {};
  const reply = {
    header(name: string, value: string) {
      headers[name] = value;
      return reply;
    },
  };
  return { reply: reply as unknown as FastifyReply, headers };
}

describe("session cookie", () => {
  const now = new Date("2026-04-01T00:00:00Z");
  const later = new Date(now.getTime() + 3600_000);

  it("is __Host- and Secure behind https, whatever the connection", () => {
    const { reply, headers } = replyDouble();
    setSessionCookie(reply, new URL("https://crm.example.com"), "tok", later, now);
    expect(headers["set-cookie"]).toBe(
      "__Host-charter_session=tok; Path=/; HttpOnly; SameSite=Lax; Secure; Max-Age=3600",
    );
  });

  it("drops the prefix and Secure for plain http (local development), where browsers refuse __Host-", () => {
    const { reply, headers } = replyDouble();
    setSessionCookie(reply, new URL("http://localhost:3000"), "tok", later, now);
    expect(headers["set-cookie"]).toBe("charter_session=tok; Path=/; HttpOnly; SameSite=Lax; Max-Age=3600");
    clearSessionCookie(reply, new URL("http://localhost:3000"));
    expect(headers["set-cookie"]).toBe("charter_session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0");
    expect(sessionCookieName(new URL("http://localhost:3000"))).toBe("charter_session");
  });

  it("reads the named cookie only, the first when repeated", () => {
    const request = (cookie?: string) => ({ headers: cookie === undefined ? {} : { cookie } }) as FastifyRequest;
    expect(readCookie(request("a=1; __Host-charter_session=xyz; b=2"), "__Host-charter_session")).toBe("xyz");
    expect(readCookie(request("charter_session=plain"), "__Host-charter_session")).toBeUndefined();
    expect(readCookie(request("x=1;x=2"), "x")).toBe("1");
    expect(readCookie(request(), "x")).toBeUndefined();
  });
});
