import { createHash, hash } from "node:crypto";
import { isUuid } from "../ids.ts";
import { canonicalize, canonicalizeAt, type JsonObject } from "./canonical.ts";

/**
 * The audit event, version 1 (promises L1, L3, L5). Events are hashed and can never be migrated, so this
 * shape is fixed for good; a new shape is a new `v`.
 *
 *     {
 *       v: 1,
 *       id: uuid (UUIDv7),
 *       chain: "tenant/<tenant uuid>/<stream>" | "platform/<stream>/<shard 00..15>",
 *       tenant: uuid | null,            // null on platform chains
 *       stream: "changes" | "security" | "access",
 *       seq: integer ≥ 1,               // gapless within the chain, in commit order
 *       at: "YYYY-MM-DDTHH:MM:SS.mmmZ", // UTC, from the clock
 *       actor: { kind: "user" | "api-key" | "operator" | "system" | "workflow" | "anonymous",
 *                id: uuid | null },     // pseudonymous; null for anonymous (always) and system (may be)
 *       action: "namespace.verb",       // e.g. record.updated; see ACTION_STREAMS
 *       target: { type: string, id: uuid | null },
 *       subjects: uuid[],               // the data subjects concerned, sorted, no duplicates
 *       details: { … },                 // non-personal JSON
 *       personal: { <subject uuid>: envelope },  // one ciphertext per subject, under that subject's key
 *       request: string | null,         // the request id
 *       cause: { kind: string, id: uuid } | null,  // e.g. the automation run that made the change
 *       prev: 64 hex                    // the previous event's hash; 64 zeros for seq 1
 *     }
 *
 *     hash = hex(SHA-256(bytes of prev (32) ‖ UTF-8 of canonical(event)))
 *
 * canonical() is canonical.ts (RFC 8785, no floating point). `id` and `chain` are inside the hash so that
 * every stored column is covered: an event moved to another chain, or given another id, no longer verifies.
 * The hash covers the personal ciphertexts, not their plaintext: destroying a subject's key (erasure) leaves
 * the chain verifiable, and key rotation may only re-wrap keys, never re-encrypt events.
 *
 * Platform chains are sharded by actor: shard = (first byte of SHA-256(UTF-8 of the actor's id, or of its
 * kind when it has none)) mod 16, written as two decimal digits.
 */

export const EVENT_VERSION = 1;
export const STREAMS = ["changes", "security", "access"] as const;
export type Stream = (typeof STREAMS)[number];
export const ACTOR_KINDS = ["user", "api-key", "operator", "system", "workflow", "anonymous"] as const;
export type ActorKind = (typeof ACTOR_KINDS)[number];
export const PLATFORM_SHARDS = 16;
export const GENESIS_HASH = "0".repeat(64);

export interface Actor {
  kind: ActorKind;
  /** A pseudonymous id (a membership, API key, operator, automation or user id); null for anonymous. */
  id: string | null;
}

export const SYSTEM_ACTOR: Actor = { kind: "system", id: null };

export interface Target {
  type: string;
  id: string | null;
}

export interface Cause {
  kind: string;
  id: string;
}

/**
 * Actions of the known namespaces and the stream each belongs to: mutations and admin actions on
 * `changes`, authentication and authorisation on `security`, reads of personal data on `access`. Modules
 * may add namespaces of their own (e.g. `workflow.run-started`); those may go to any stream.
 */
export const ACTION_STREAMS: Readonly<Record<string, Stream>> = {
  record: "changes",
  subject: "changes",
  tenant: "changes",
  auth: "security",
  access: "access",
};

export type KnownAction =
  | "record.created"
  | "record.updated"
  | "record.deleted"
  | "subject.erased"
  | "tenant.created"
  | "tenant.settings-changed"
  | "tenant.feature-changed";

/** What a writer hands to audit.record: the chain fields, time and hashes are the audit service's. */
export interface NewEvent {
  /** The tenant whose chain the event goes to; null: the actor's platform chain. */
  tenantId: string | null;
  stream: Stream;
  actor: Actor;
  /** record.updated needs `details.fields`, the names of the changed fields. */
  action: KnownAction | `auth.${string}` | `access.${string}` | `${string}.${string}`;
  target: Target;
  subjects?: readonly string[];
  details?: JsonObject;
  /** Personal details per subject (each key must be in `subjects`), encrypted under that subject's key. */
  personal?: Readonly<Record<string, JsonObject>>;
  requestId?: string | null;
  cause?: Cause | null;
}

/** Version 1 as hashed (without its hash). */
export interface AuditEvent {
  v: 1;
  id: string;
  chain: string;
  tenant: string | null;
  stream: Stream;
  seq: number;
  at: string;
  actor: Actor;
  action: string;
  target: Target;
  subjects: string[];
  details: JsonObject;
  personal: Record<string, string>;
  request: string | null;
  cause: Cause | null;
  prev: string;
}

export interface StoredEvent extends AuditEvent {
  hash: string;
}

const ACTION = /^[a-z][a-z0-9-]{0,62}(\.[a-z][a-z0-9-]{0,62}){1,3}$/;
const NAME = /^[a-z][a-z0-9_.-]{0,62}$/;
const HASH = /^[0-9a-f]{64}$/;
const MAX_REQUEST_ID = 200;

export const isHash = (value: unknown): value is string => typeof value === "string" && HASH.test(value);
const isUuidText = (value: unknown): value is string => typeof value === "string" && isUuid(value);

export function isStream(value: unknown): value is Stream {
  return (STREAMS as readonly unknown[]).includes(value);
}

export function tenantChainId(tenantId: string, stream: Stream): string {
  return `tenant/${tenantId.toLowerCase()}/${stream}`;
}

export function platformShard(actor: Actor): number {
  const digest = createHash("sha256")
    .update(actor.id ?? actor.kind, "utf8")
    .digest();
  return (digest[0] ?? 0) % PLATFORM_SHARDS;
}

export function platformChainId(stream: Stream, actor: Actor): string {
  return `platform/${stream}/${String(platformShard(actor)).padStart(2, "0")}`;
}

function fail(message: string): never {
  throw new TypeError(`audit event: ${message}`);
}

function hasNul(value: unknown): boolean {
  if (typeof value === "string") return value.includes("\u0000");
  if (Array.isArray(value)) return value.some(hasNul);
  if (value !== null && typeof value === "object") {
    return Object.entries(value).some(([k, v]) => k.includes("\u0000") || hasNul(v));
  }
  return false;
}

/** `depth`: how deep the value sits in the hashed event, so nesting is refused here as hashing would refuse it. */
function checkJsonObject(name: string, value: unknown, depth = 0): JsonObject {
  if (value === null || typeof value !== "object" || Array.isArray(value)) fail(`${name} must be a JSON object`);
  canonicalizeAt(value, `$.${name}`, depth);
  // PostgreSQL's jsonb cannot hold U+0000: refused here rather than as a raw database error.
  if (hasNul(value)) fail(`${name} must not contain U+0000`);
  return value as JsonObject;
}

/**
 * Checks a writer's event and returns it normalised (subjects sorted and unique, ids lower case). Nothing
 * is written for an event this refuses.
 */
export function checkNewEvent(event: NewEvent): Required<NewEvent> {
  if (event === null || typeof event !== "object") fail("must be an object");
  const { tenantId, stream, actor, action, target } = event;
  if (tenantId !== null && !isUuidText(tenantId)) fail("tenantId must be a UUID or null");
  if (!isStream(stream)) fail(`stream must be one of ${STREAMS.join(", ")}`);
  if (!actor || !(ACTOR_KINDS as readonly unknown[]).includes(actor.kind)) {
    fail(`actor.kind must be one of ${ACTOR_KINDS.join(", ")}`);
  }
  if (actor.kind === "anonymous" ? actor.id !== null : actor.id !== null && !isUuidText(actor.id)) {
    fail("actor.id must be a UUID (null for an anonymous actor)");
  }
  if (actor.id === null && actor.kind !== "anonymous" && actor.kind !== "system") {
    fail(`an actor of kind ${actor.kind} needs its pseudonymous id`);
  }
  if (typeof action !== "string" || !ACTION.test(action)) fail("action must look like namespace.verb (a-z, 0-9, -)");
  const expected = ACTION_STREAMS[action.slice(0, action.indexOf("."))];
  if (expected && expected !== stream) fail(`${action} belongs on the ${expected} stream, not ${stream}`);
  if (!target || typeof target.type !== "string" || !NAME.test(target.type)) {
    fail("target.type must be a lower-case name");
  }
  if (target.id !== null && !isUuidText(target.id)) fail("target.id must be a UUID or null");
  const subjects = event.subjects ?? [];
  if (!Array.isArray(subjects) || !subjects.every(isUuidText)) fail("subjects must be UUIDs");
  const details = checkJsonObject("details", event.details ?? {}, 1);
  if (action === "record.updated") {
    const fields = details.fields;
    if (!Array.isArray(fields) || fields.length === 0 || !fields.every((f) => typeof f === "string")) {
      fail("record.updated needs details.fields, the names of the changed fields");
    }
  }
  const normalSubjects = [...new Set(subjects.map((s) => s.toLowerCase()))].sort();
  const personal: Record<string, JsonObject> = {};
  for (const [subject, value] of Object.entries(checkJsonObject("personal", event.personal ?? {}))) {
    if (!normalSubjects.includes(subject.toLowerCase())) fail("every key of personal must be one of the subjects");
    personal[subject.toLowerCase()] = checkJsonObject(`personal of ${subject}`, value);
  }
  const requestId = event.requestId ?? null;
  if (requestId !== null && (typeof requestId !== "string" || requestId.length > MAX_REQUEST_ID || hasNul(requestId))) {
    fail(`requestId must be a string of at most ${MAX_REQUEST_ID} characters`);
  }
  const cause = event.cause ?? null;
  if (cause !== null && (typeof cause.kind !== "string" || !NAME.test(cause.kind) || !isUuidText(cause.id))) {
    fail("cause must be { kind: a lower-case name, id: a UUID } or null");
  }
  const lower = (id: string | null) => id?.toLowerCase() ?? null;
  return {
    tenantId: lower(tenantId),
    stream,
    actor: { kind: actor.kind, id: lower(actor.id) },
    action,
    target: { type: target.type, id: lower(target.id) },
    subjects: normalSubjects,
    details,
    personal,
    requestId,
    cause: cause && { kind: cause.kind, id: cause.id.toLowerCase() },
  };
}

const V1_KEYS: ReadonlySet<string> = new Set([
  "action",
  "actor",
  "at",
  "cause",
  "chain",
  "details",
  "id",
  "personal",
  "prev",
  "request",
  "seq",
  "stream",
  "subjects",
  "target",
  "tenant",
  "v",
]);

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value);
  return (proto === Object.prototype || proto === null) && Object.getOwnPropertySymbols(value).length === 0;
}

function hasExactly(value: Record<string, unknown>, size: number, has: (key: string) => boolean): boolean {
  const keys = Object.keys(value);
  return keys.length === size && keys.every(has);
}

/** The text of an object of two members named `a` < `b` (plain names), given their values' canonical texts. */
const pairText = (a: string, aText: string, b: string, bText: string) => `{"${a}":${aText},"${b}":${bText}}`;

/** `{ a, b }` (a < b) inside the event, the paths spelled out by the caller; anything else as canonicalize writes it. */
function pair(value: unknown, path: string, a: string, pathA: string, b: string, pathB: string): string {
  if (!isPlainObject(value) || !hasExactly(value, 2, (k) => k === a || k === b)) {
    return canonicalizeAt(value, path, 1);
  }
  return pairText(a, canonicalizeAt(value[a], pathA, 2), b, canonicalizeAt(value[b], pathB, 2));
}

/** The text of `subjects`: an array of strings written member by member, anything else as canonicalize writes it. */
function subjectsText(value: unknown): string {
  if (!Array.isArray(value)) return canonicalizeAt(value, "$.subjects", 1);
  let text = "[";
  for (let i = 0; i < value.length; i++) {
    const item: unknown = value[i];
    // A hole reads as undefined; the whole array is handed over to be refused with canonicalize's path.
    if (typeof item !== "string") return canonicalizeAt(value, "$.subjects", 1);
    try {
      text += i === 0 ? canonicalizeAt(item, "$.subjects", 2) : `,${canonicalizeAt(item, "$.subjects", 2)}`;
    } catch {
      return canonicalizeAt(value, "$.subjects", 1);
    }
  }
  return `${text}]`;
}

/**
 * The version-1 text of an event's fields with `seq` in place of its own: every member but `hash` (a stored
 * event's), which is not hashed.
 */
function writeV1(e: Record<string, unknown>, seq: unknown): string {
  return v1Text({
    action: canonicalizeAt(e.action, "$.action", 1),
    actor: pair(e.actor, "$.actor", "id", "$.actor.id", "kind", "$.actor.kind"),
    at: canonicalizeAt(e.at, "$.at", 1),
    cause: pair(e.cause, "$.cause", "id", "$.cause.id", "kind", "$.cause.kind"),
    chain: canonicalizeAt(e.chain, "$.chain", 1),
    details: canonicalizeAt(e.details, "$.details", 1),
    id: canonicalizeAt(e.id, "$.id", 1),
    personal: canonicalizeAt(e.personal, "$.personal", 1),
    prev: canonicalizeAt(e.prev, "$.prev", 1),
    request: canonicalizeAt(e.request, "$.request", 1),
    seq: canonicalizeAt(seq, "$.seq", 1),
    stream: canonicalizeAt(e.stream, "$.stream", 1),
    subjects: subjectsText(e.subjects),
    target: pair(e.target, "$.target", "id", "$.target.id", "type", "$.target.type"),
    tenant: canonicalizeAt(e.tenant, "$.tenant", 1),
    v: canonicalizeAt(e.v, "$.v", 1),
  });
}

/** The canonical text of each member of a version-1 event (without `hash`). */
type V1MemberTexts = Record<keyof AuditEvent, string>;

/**
 * The version-1 text from its members' canonical texts, in the sorted order of their names (line-hash.ts
 * writes the same shape from a stored row's bytes; a property test holds the two equal).
 */
function v1Text(m: V1MemberTexts): string {
  return (
    `{"action":${m.action},"actor":${m.actor},"at":${m.at},"cause":${m.cause},"chain":${m.chain}` +
    `,"details":${m.details},"id":${m.id},"personal":${m.personal},"prev":${m.prev},"request":${m.request}` +
    `,"seq":${m.seq},"stream":${m.stream},"subjects":${m.subjects},"target":${m.target},"tenant":${m.tenant}` +
    `,"v":${m.v}}`
  );
}

/**
 * canonicalize(event) for an event of version 1's shape, several times as fast (the hash is most of what
 * verification costs): the fixed members are written in their sorted order directly, and only the values
 * go through canonical.ts, at the depth and path they have in the event, so the text and any
 * CanonicalFormError are canonicalize's. Any other shape (a member more or less, a symbol key, an actor
 * that is not a plain { id, kind }) is handed to canonicalize whole.
 */
export function canonicalEvent(event: AuditEvent): string {
  const e: unknown = event;
  if (!isPlainObject(e) || !hasExactly(e, V1_KEYS.size, (k) => V1_KEYS.has(k))) return canonicalize(event);
  return writeV1(e, e.seq);
}

/**
 * SHA-256 over prev (32 bytes) ‖ UTF-8 of the text, in one call on a buffer reused from call to call: the
 * per-call hash object and the separate update of the previous hash cost more than the digest itself.
 */
let scratch = Buffer.allocUnsafe(4096);
function chainedDigest(prev: string, text: string): string {
  // A UTF-16 code unit takes at most 3 bytes of UTF-8, so the text always fits.
  const room = 32 + 3 * text.length;
  if (room > scratch.length) scratch = Buffer.allocUnsafe(Math.max(room, 2 * scratch.length));
  scratch.write(prev, 0, 32, "hex");
  const size = 32 + scratch.write(text, 32, "utf8");
  return hash("sha256", scratch.subarray(0, size), "hex");
}

/** The hash of an event (without its hash), chained to `event.prev`. */
export function eventHash(event: AuditEvent): string {
  if (!isHash(event.prev)) throw new TypeError("an event's prev must be 64 hex digits");
  return chainedDigest(event.prev, canonicalEvent(event));
}

/**
 * The hash a stored event would have at sequence `seq` (its own, or another where verification asks where
 * a moved event belongs): eventHash of the event without its `hash` and with `seq`, without copying it.
 */
export function storedEventHash(event: StoredEvent, seq: number): string {
  const e: unknown = event;
  if (!isPlainObject(e) || !hasExactly(e, V1_KEYS.size + 1, (k) => k === "hash" || V1_KEYS.has(k))) {
    const { hash: _, ...unhashed } = event;
    return eventHash({ ...unhashed, seq });
  }
  if (!isHash(event.prev)) throw new TypeError("an event's prev must be 64 hex digits");
  return chainedDigest(event.prev, writeV1(e, seq));
}

/** The event as it is hashed: exactly the fields of version 1, nothing else. */
export function hashedFields(event: AuditEvent): AuditEvent {
  const { v, id, chain, tenant, stream, seq, at, actor, action, target, subjects, details, personal } = event;
  const { request, cause, prev } = event;
  return {
    v,
    id,
    chain,
    tenant,
    stream,
    seq,
    at,
    actor: { kind: actor.kind, id: actor.id },
    action,
    target: { type: target.type, id: target.id },
    subjects,
    details,
    personal,
    request,
    cause: cause && { kind: cause.kind, id: cause.id },
    prev,
  };
}
