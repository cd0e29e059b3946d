import { Readable } from "node:stream";
import type { FastifyReply } from "fastify";
import { checkpointsForChains } from "../../platform/audit/checkpoint-verify.ts";
import { CheckpointError } from "../../platform/audit/checkpoints.ts";
import { exportBatches } from "../../platform/audit/export.ts";
import { canonicalize, STREAMS, type Stream, tenantChainId } from "../../platform/audit/index.ts";
import { HttpProblem } from "../../platform/http/problem.ts";
import { CSV_COLUMNS, csvRecord, eventRecord } from "./csv.ts";
import type { AuditLogDeps } from "./deps.ts";
import type { EventFilters } from "./filters.ts";
import { tenantEvents } from "./service.ts";

/**
 * The two exports of a tenant's audit log, streamed: CSV of the filtered events (for people and
 * spreadsheets), and the verifiable JSON Lines of its chains (for auditors). Each is produced a page at a
 * time while the client reads, with no transaction open between pages. A failure after the first bytes
 * aborts the response, so a client never mistakes a cut-off export for a whole one.
 */

/** Lines grouped into chunks of about this many characters, so that a large export is not a write per line. */
const CHUNK = 64 * 1024;

async function* chunked(lines: AsyncIterable<string>): AsyncGenerator<string> {
  let buffer = "";
  for await (const line of lines) {
    buffer += line;
    if (buffer.length >= CHUNK) {
      yield buffer;
      buffer = "";
    }
  }
  if (buffer) yield buffer;
}

/** Sends the lines as an attachment, reading them only as fast as the client takes them. */
export function sendLines(
  reply: FastifyReply,
  file: { name: string; type: string },
  lines: AsyncIterable<string>,
): FastifyReply {
  return reply
    .header("content-disposition", `attachment; filename="${file.name}"`)
    .header("cache-control", "no-store")
    .type(file.type)
    .send(Readable.from(chunked(lines), { objectMode: false }));
}

/** The CSV export: a header row, then one record per event matching the filters, newest first. */
export async function* csvLines(deps: AuditLogDeps, tenantId: string, filters: EventFilters): AsyncGenerator<string> {
  yield csvRecord(CSV_COLUMNS);
  for await (const event of tenantEvents(deps.db, tenantId, filters)) yield eventRecord(event);
}

/**
 * The JSON Lines export of the tenant's chains (one stream, or all three), each as `charter audit export`
 * writes it: its events in sequence order, one canonical event with its hash per line, then one
 * `{"checkpoint": …}` line for each signed checkpoint covering it, with the inclusion proof of its head, and a
 * `{"keyRotation": …}` line for each rotation of the signing key, in the order of the chain of records. Event
 * and checkpoint lines name their chain (`chain` in events, `head.chain` in checkpoints); each chain's part
 * repeats the rotations, so that it verifies on its own.
 *
 * The checkpoints are read and verified before anything is sent (a store that does not verify refuses the
 * export with 409), and before the events are read, so that every head they sign is among the events sent.
 */
export async function jsonLines(
  deps: AuditLogDeps,
  tenantId: string,
  stream: Stream | undefined,
): Promise<AsyncGenerator<string>> {
  const streams = stream ? [stream] : [...STREAMS];
  let covering: Awaited<ReturnType<typeof checkpointsForChains>>;
  try {
    covering = await checkpointsForChains({
      db: deps.db,
      dir: deps.checkpoints.dir,
      verifier: deps.checkpoints.verifier,
      chainIds: streams.map((s) => tenantChainId(tenantId, s)),
    });
  } catch (error) {
    if (error instanceof CheckpointError) {
      throw new HttpProblem(
        "conflict",
        "the audit checkpoints do not verify: verify the audit log and tell the operator",
      );
    }
    throw error;
  }
  return (async function* () {
    for (const s of streams) {
      for await (const batch of exportBatches(deps.db, { tenantId, stream: s })) {
        for (const event of batch) yield `${canonicalize(event)}\n`;
      }
      for (const line of covering.get(tenantChainId(tenantId, s)) ?? []) yield `${canonicalize(line)}\n`;
    }
  })();
}
