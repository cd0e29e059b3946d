import { describe, expect, it } from "vitest";
import { createLogger, REDACTED, scrub, serializeRequest } from "./log.ts";

const EMAIL = "marker.person@example.com";
const PASSWORD = "Marker-Password-8472";
const BEARER = "eyJhbGciOiJIUzI1NiJ9MarkerToken0123456789abcdefXYZ";
const IP = "203.0.113.77";
const HEX_TOKEN = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const MARKERS = [EMAIL, PASSWORD, BEARER, IP, HEX_TOKEN, "marker.person", "Marker Person", "+44 7700 900123"];

function capture() {
  const lines: string[] = [];
  const logger = createLogger("trace", { write: (line: string) => void lines.push(line) });
  return { logger, output: () => lines.join("") };
}

function expectNoMarkers(output: string): void {
  for (const marker of MARKERS) expect(output).not.toContain(marker);
}

describe("application logs (L5)", () => {
  it("redacts personal and secret fields at the top level and nested up to four objects deep", () => {
    const { logger, output } = capture();
    logger.info({ email: EMAIL, password: PASSWORD, ip: IP, name: "Marker Person" }, "top level");
    logger.info({ user: { email: EMAIL, phone: "+44 7700 900123", displayName: "Marker Person" } }, "one deep");
    logger.info({ request: { headers: { authorization: `Bearer ${BEARER}`, cookie: `sid=${BEARER}` } } }, "headers");
    logger.info({ a: { b: { c: { d: { email: EMAIL, token: BEARER, secret: PASSWORD } } } } }, "four deep");
    logger.info({ contacts: [{ email: EMAIL, address: "1 Marker Street" }] }, "array");
    logger.info({ socket: { remoteAddress: IP }, creds: { apiKey: BEARER, key: HEX_TOKEN } }, "misc");
    const text = output();
    expectNoMarkers(text);
    expect(text).not.toContain("1 Marker Street");
    expect(text).toContain(REDACTED);
    // Every line is still valid JSON after redaction and scrubbing.
    for (const line of text.trim().split("\n")) expect(() => JSON.parse(line)).not.toThrow();
  });

  it("scrubs emails, addresses and tokens from messages, format arguments and unnamed fields", () => {
    const { logger, output } = capture();
    logger.info(`sign-in by ${EMAIL} from ${IP} with Bearer ${BEARER}`);
    logger.warn("token %s rejected for %s", HEX_TOKEN, EMAIL);
    logger.info({ note: `contact ${EMAIL}`, deep: { a: { b: { c: { d: { e: { f: EMAIL } } } } } } }, "free text");
    expectNoMarkers(output());
    expect(output()).toContain("[email]");
    expect(output()).toContain("[token]");
    expect(output()).toContain("[ip]");
  });

  it("serializes errors with type, scrubbed message and stack", () => {
    const { logger, output } = capture();
    logger.error({ err: new TypeError(`no account for ${EMAIL} (password ${PASSWORD})`) }, "failed");
    const line = JSON.parse(output()) as { err: { type: string; message: string; stack: string } };
    expect(line.err.type).toBe("TypeError");
    expect(line.err.message).toContain("no account for [email]");
    expect(line.err.stack).toContain("TypeError");
    expect(output()).not.toContain(EMAIL);
  });

  it("keeps only the request id, method and path of a request", () => {
    expect(
      serializeRequest({ id: "r1", method: "GET", url: `/api/x?email=${EMAIL}`, headers: {}, ip: IP } as never),
    ).toEqual({ id: "r1", method: "GET", path: "/api/x" });
  });

  it("keeps non-personal fields, request ids and UUIDs (positive control)", () => {
    const { logger, output } = capture();
    const id = "0190a5b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b";
    logger.info({ tenantCount: 42, status: "marker-non-personal", requestId: id }, `processed request ${id}`);
    const line = JSON.parse(output()) as Record<string, unknown>;
    expect(line.tenantCount).toBe(42);
    expect(line.status).toBe("marker-non-personal");
    expect(line.requestId).toBe(id);
    expect(line.msg).toBe(`processed request ${id}`);
  });

  it("scrub leaves ordinary text alone", () => {
    expect(scrub("listening on port 8080, version 1.2.3")).toBe("listening on port 8080, version 1.2.3");
    expect(scrub("/work/main/node_modules/fastify/lib/route.js")).toBe("/work/main/node_modules/fastify/lib/route.js");
    expect(scrub(`user ${EMAIL}`)).toBe("user [email]");
  });
});
