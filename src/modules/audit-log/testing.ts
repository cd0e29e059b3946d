import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SigningKey } from "../../platform/crypto/signing-key.ts";
import { buildTestApp, type TestApp } from "../../platform/http/test-app.ts";
import type { IdentityDeps } from "../identity/deps.ts";
import { createIdentity } from "../identity/index.ts";
import type { AuditLogDeps } from "./deps.ts";
import { auditLogRoutes } from "./routes.ts";

/**
 * Test support for the audit log API: its dependencies beside the identity module's (the same database,
 * clock, audit log and rate limiter), with a checkpoint directory of its own under the system's temporary
 * directory and a fresh signing key, which tests use to make checkpoints (createCheckpoint).
 */
export function createAuditLogTestDeps(identity: IdentityDeps): AuditLogDeps & { signingKey: SigningKey } {
  const signingKey = new SigningKey(generateKeyPairSync("ed25519").privateKey);
  return {
    db: identity.db,
    clock: identity.clock,
    audit: identity.audit,
    rateLimiter: identity.rateLimiter,
    checkpoints: { dir: mkdtempSync(join(tmpdir(), "charter-audit-log-")), verifier: signingKey },
    signingKey,
  };
}

/** The kernel with the identity module's routes and access control and the audit log API. */
export function buildAuditLogTestApp(identity: IdentityDeps, deps: AuditLogDeps): Promise<TestApp> {
  const module = createIdentity(identity);
  return buildTestApp({
    db: identity.db,
    clock: identity.clock,
    rateLimiter: identity.rateLimiter,
    routes: [...module.routes, ...auditLogRoutes(deps)],
    accessControl: module.accessControl,
  });
}

/**
 * A strict RFC 4180 reader, written apart from csv.ts to check it: records end in CRLF, a quoted field may
 * hold anything with its quotes doubled, and anything else malformed (a bare line break, a quote inside an
 * unquoted field, text after a closing quote, a last record without its CRLF) throws.
 */
export function parseCsv(text: string): string[][] {
  const records: string[][] = [];
  let record: string[] = [];
  let field = "";
  let state: "start" | "unquoted" | "quoted" | "closed" = "start";
  const endField = () => {
    record.push(field);
    field = "";
    state = "start";
  };
  for (let i = 0; i < text.length; i++) {
    const c = text[i] as string;
    if (state === "quoted") {
      if (c !== '"') field += c;
      else if (text[i + 1] === '"') {
        field += '"';
        i++;
      } else state = "closed";
      continue;
    }
    if (c === ",") endField();
    else if (c === "\r" && text[i + 1] === "\n") {
      endField();
      records.push(record);
      record = [];
      i++;
    } else if (c === "\r" || c === "\n") throw new Error(`a bare line break at ${i}`);
    else if (state === "closed") throw new Error(`text after a closing quote at ${i}`);
    else if (c === '"') {
      if (state !== "start") throw new Error(`a quote inside an unquoted field at ${i}`);
      state = "quoted";
    } else {
      field += c;
      state = "unquoted";
    }
  }
  if (state === "quoted") throw new Error("an unterminated quoted field");
  if (state !== "start" || field !== "" || record.length > 0) throw new Error("the last record does not end in CRLF");
  return records;
}
