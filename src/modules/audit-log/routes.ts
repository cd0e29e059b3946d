import { z } from "zod";
import { ACTOR_KINDS, type NewEvent, STREAMS } from "../../platform/audit/index.ts";
import { HttpProblem, problemSchema } from "../../platform/http/problem.ts";
import { type AnyRoute, defineRoute, type RouteRequest } from "../../platform/http/routes.ts";
import type { RateRule } from "../../platform/ratelimit/limiter.ts";
import { tenantAuditActor } from "../identity/memberships.ts";
import type { AuditLogDeps } from "./deps.ts";
import { csvLines, jsonLines, sendLines } from "./exports.ts";
import { describeFilters, eventFilters, filterQuery, pageQuery } from "./filters.ts";
import { tenantEventsPage, userSecurityEventsPage } from "./service.ts";
import { verifyTenant } from "./verification.ts";

/**
 * The audit log API (promise L4): a tenant's admins and owners (permission audit.read) list its events with
 * filters, export them as CSV or as the verifiable JSON Lines of its chains, and verify its chains against
 * the signed checkpoints; every export and verification is itself an event on the tenant's security chain.
 * Anyone signed in reads their own security events from the platform chains.
 */

const TAGS = ["audit"];

/** Each export reads the tenant's whole log: enough for any person or SIEM pull, not for a flood. */
export const EXPORTS_PER_TENANT: RateRule = { name: "audit-export", limit: 60, windowSeconds: 3600 };
/** Verification reads every chain and every checkpoint of the platform: a few an hour. */
export const VERIFICATIONS_PER_TENANT: RateRule = { name: "audit-verify", limit: 12, windowSeconds: 3600 };

const id = z.guid();
const eventSchema = z
  .object({
    id,
    chain: z.string(),
    stream: z.enum(STREAMS),
    seq: z.number().int(),
    at: z.iso.datetime(),
    actor: z.object({ kind: z.enum(ACTOR_KINDS), id: id.nullable() }),
    action: z.string(),
    target: z.object({ type: z.string(), id: id.nullable() }),
    subjects: z.array(id).describe("The data subjects the event concerns (pseudonymous ids)"),
    details: z.record(z.string(), z.unknown()).describe("Non-personal details; personal ones are never returned"),
    requestId: z.string().nullable(),
    cause: z.object({ kind: z.string(), id }).nullable(),
    hash: z.string().describe("The event's hash in its chain"),
  })
  .meta({ id: "AuditEvent" });
const eventPage = z.object({ items: z.array(eventSchema), nextCursor: z.string().nullable() });

const verificationSchema = z
  .object({
    ok: z.boolean(),
    checked: z.object({ chains: z.number().int(), events: z.number().int(), checkpoints: z.number().int() }),
    failures: z.array(
      z.object({ chain: z.string(), sequence: z.number().int(), kind: z.string(), detail: z.string() }),
    ),
    latestCheckpoint: z
      .object({
        record: z.object({
          v: z.literal(1),
          type: z.literal("checkpoint"),
          seq: z.number().int(),
          at: z.string(),
          root: z.string(),
          leaves: z.number().int(),
          prev: z.string(),
          keyId: z.string(),
        }),
        signature: z.string(),
        hash: z.string(),
      })
      .nullable(),
  })
  .meta({ id: "AuditVerification" });

const tenantParams = z.object({ tenantId: z.uuid() });
const refusals = { 400: problemSchema, 404: problemSchema, 429: problemSchema };

type TenantRequest = RouteRequest<unknown, unknown, unknown>;

export function auditLogRoutes(deps: AuditLogDeps): AnyRoute[] {
  const { db, audit, rateLimiter } = deps;

  function tenantOf(request: TenantRequest) {
    const { principal, grant, tenantId } = request;
    if (!principal || !grant || !tenantId) throw new TypeError("a tenant route ran without a grant");
    return { tenantId, actor: tenantAuditActor({ principal, grant, requestId: request.requestId }) };
  }

  async function throttle(tenantId: string, rule: RateRule): Promise<void> {
    const decision = await rateLimiter.consume({ kind: "tenant", id: tenantId }, rule, { exact: true });
    if (!decision.allowed) {
      throw new HttpProblem("rate-limited", "too many audit exports or verifications for this organization", {
        headers: { "retry-after": String(decision.retryAfter) },
      });
    }
  }

  /** Records an export or verification on the tenant's security chain, in a transaction of its own. */
  function record(request: TenantRequest, action: `audit.${string}`, details: NewEvent["details"]) {
    const { tenantId, actor } = tenantOf(request);
    return db.withTenant({ tenantId, actorId: actor.id ?? "", requestId: request.requestId }, (tx) =>
      audit.record(tx, {
        tenantId,
        stream: "security",
        actor,
        action,
        target: { type: "tenant", id: tenantId },
        details,
        requestId: request.requestId,
      }),
    );
  }

  return [
    defineRoute({
      method: "GET",
      url: "/api/v1/tenants/:tenantId/audit/events",
      operationId: "listAuditEvents",
      summary: "The organization's audit events, newest first, filtered by stream, actor, action, target and time",
      tags: TAGS,
      permission: { kind: "tenant", permission: "audit.read" },
      params: tenantParams,
      query: filterQuery.extend(pageQuery.shape),
      response: { 200: eventPage, ...refusals },
      handler: async (request) => {
        const { tenantId } = tenantOf(request);
        const { cursor, limit, ...filters } = request.query;
        return tenantEventsPage(db, tenantId, eventFilters(filters), { cursor, limit });
      },
    }),
    defineRoute({
      method: "GET",
      url: "/api/v1/tenants/:tenantId/audit/export.csv",
      operationId: "exportAuditEventsCsv",
      summary: "The organization's audit events matching the filters as CSV (RFC 4180, safe to open in a spreadsheet)",
      tags: TAGS,
      permission: { kind: "tenant", permission: "audit.read" },
      params: tenantParams,
      query: filterQuery,
      response: { 200: z.string().describe("text/csv: a header row, then one event per row"), ...refusals },
      handler: async (request, reply) => {
        const { tenantId } = tenantOf(request);
        const filters = eventFilters(request.query);
        await throttle(tenantId, EXPORTS_PER_TENANT);
        await record(request, "audit.exported", { format: "csv", filters: describeFilters(filters) });
        return sendLines(
          reply,
          { name: `audit-${tenantId}.csv`, type: "text/csv; charset=utf-8; header=present" },
          csvLines(deps, tenantId, filters),
        );
      },
    }),
    defineRoute({
      method: "GET",
      url: "/api/v1/tenants/:tenantId/audit/export.jsonl",
      operationId: "exportAuditChains",
      summary:
        "The organization's audit chains as verifiable JSON Lines: every event with its hash, then the signed " +
        "checkpoints covering each chain with their inclusion proofs",
      tags: TAGS,
      permission: { kind: "tenant", permission: "audit.read" },
      params: tenantParams,
      query: z.object({ stream: z.enum(STREAMS).optional().describe("Only this stream's chain (default: all three)") }),
      response: {
        200: z.string().describe("application/jsonl: events and checkpoints, one canonical JSON object per line"),
        ...refusals,
        409: problemSchema,
      },
      handler: async (request, reply) => {
        const { tenantId } = tenantOf(request);
        const { stream } = request.query;
        await throttle(tenantId, EXPORTS_PER_TENANT);
        const lines = await jsonLines(deps, tenantId, stream);
        await record(request, "audit.exported", { format: "jsonl", ...(stream ? { stream } : {}) });
        return sendLines(reply, { name: `audit-${tenantId}.jsonl`, type: "application/jsonl; charset=utf-8" }, lines);
      },
    }),
    defineRoute({
      method: "POST",
      url: "/api/v1/tenants/:tenantId/audit/verify",
      operationId: "verifyAuditLog",
      summary:
        "Verify the organization's audit chains against their hashes and the signed checkpoint chain; returns the " +
        "failures (chain, sequence, kind) and the latest checkpoint",
      tags: TAGS,
      permission: { kind: "tenant", permission: "audit.read" },
      params: tenantParams,
      response: { 200: verificationSchema, ...refusals },
      handler: async (request) => {
        const { tenantId } = tenantOf(request);
        await throttle(tenantId, VERIFICATIONS_PER_TENANT);
        const result = await verifyTenant(deps, tenantId);
        await record(request, "audit.verified", {
          ok: result.ok,
          failures: result.failures.length,
          checkpoint: result.latestCheckpoint?.record.seq ?? null,
        });
        return result;
      },
    }),
    defineRoute({
      method: "GET",
      url: "/api/v1/me/security-events",
      operationId: "listMySecurityEvents",
      summary: "Your own security events, newest first: sign-ins, failed sign-ins, second factors, sessions",
      tags: TAGS,
      permission: { kind: "authenticated" },
      query: pageQuery,
      response: { 200: eventPage, 400: problemSchema, 401: problemSchema },
      handler: async (request) => {
        const userId = request.principal?.userId;
        if (!userId) throw new HttpProblem("unauthenticated", "sign in as a person to read your security events");
        return userSecurityEventsPage(db, userId, request.query);
      },
    }),
  ];
}
