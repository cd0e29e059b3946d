import { z } from "zod";
import { ACTOR_KINDS, type ActorKind, STREAMS, type Stream } from "../../platform/audit/index.ts";
import { HttpProblem } from "../../platform/http/problem.ts";
import { isUuid } from "../../platform/ids.ts";

/**
 * What the audit log can be filtered by, as query parameters, and the opaque cursor of its pages. An action
 * filter is one action exactly (`auth.signed-in`) or every action under a prefix (`auth.*`); times are a
 * half-open range, `from` included and `to` not.
 */

const SEGMENT = "[a-z][a-z0-9-]{0,62}";
/** An action as event.ts allows it (namespace.verb, up to four parts), or a prefix of one ending in `.*`. */
const ACTION_FILTER = new RegExp(`^${SEGMENT}(?:(?:\\.${SEGMENT}){1,3}|(?:\\.${SEGMENT}){0,2}\\.\\*)$`);
const TARGET_TYPE = /^[a-z][a-z0-9_.-]{0,62}$/;

export const MAX_PAGE = 200;

export const filterQuery = z.object({
  stream: z.enum(STREAMS).optional().describe("Only this stream: changes, security or access"),
  actorKind: z.enum(ACTOR_KINDS).optional().describe("Only events of this kind of actor"),
  actorId: z.uuid().optional().describe("Only events of this actor (a membership, API key or operator id)"),
  action: z
    .string()
    .regex(ACTION_FILTER, "an action (auth.signed-in) or a prefix of one ending in .* (auth.*)")
    .optional()
    .describe("One action exactly, or every action under a prefix: auth.*"),
  targetType: z.string().regex(TARGET_TYPE, "a lower-case name").optional(),
  targetId: z.uuid().optional(),
  from: z.iso.datetime({ offset: true }).optional().describe("Events at or after this time"),
  to: z.iso.datetime({ offset: true }).optional().describe("Events before this time"),
});

export const pageQuery = z.object({
  cursor: z.string().max(64).optional().describe("The nextCursor of the previous page"),
  limit: z.coerce.number().int().min(1).max(MAX_PAGE).default(50),
});

export interface EventFilters {
  stream?: Stream;
  actorKind?: ActorKind;
  actorId?: string;
  /** An exact action, or a prefix (without its `*`, ending in a dot) in `actionPrefix`. */
  action?: string;
  actionPrefix?: string;
  targetType?: string;
  targetId?: string;
  from?: Date;
  to?: Date;
}

/** The filters of a request, checked beyond their schema: a range that ends before it starts is refused. */
export function eventFilters(query: z.infer<typeof filterQuery>): EventFilters {
  const filters: EventFilters = {};
  if (query.stream) filters.stream = query.stream;
  if (query.actorKind) filters.actorKind = query.actorKind;
  if (query.actorId) filters.actorId = query.actorId.toLowerCase();
  if (query.action?.endsWith(".*")) filters.actionPrefix = query.action.slice(0, -1);
  else if (query.action) filters.action = query.action;
  if (query.targetType) filters.targetType = query.targetType;
  if (query.targetId) filters.targetId = query.targetId.toLowerCase();
  if (query.from) filters.from = new Date(query.from);
  if (query.to) filters.to = new Date(query.to);
  if (filters.from && filters.to && filters.from > filters.to) {
    throw new HttpProblem("bad-request", "`from` must not be after `to`");
  }
  return filters;
}

/**
 * The filters as they are recorded in the audit.exported event: ids and names only (no personal data can be
 * in them), times as ISO text.
 */
export function describeFilters(filters: EventFilters): Record<string, string> {
  const described: Record<string, string> = {};
  for (const [name, value] of Object.entries(filters)) {
    if (value !== undefined) described[name] = value instanceof Date ? value.toISOString() : String(value);
  }
  return described;
}

/**
 * A page's cursor: the id of the last event it holds (events are listed newest first, by id, which is a
 * UUIDv7 and so in the order the events were made), base64url-encoded so that clients treat it as opaque.
 */
export function encodeCursor(lastEventId: string): string {
  return Buffer.from(lastEventId, "utf8").toString("base64url");
}

export function decodeCursor(cursor: string | undefined): string | undefined {
  if (cursor === undefined) return undefined;
  const id = Buffer.from(cursor, "base64url").toString("utf8");
  if (!isUuid(id)) throw new HttpProblem("bad-request", "the cursor is not one this API handed out");
  return id.toLowerCase();
}
