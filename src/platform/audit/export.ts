import type { Database } from "../db/index.ts";
import { isUuid } from "../ids.ts";
import { canonicalize } from "./canonical.ts";
import { type ChainLocation, eventsAfter } from "./chains.ts";
import { isStream, type StoredEvent, type Stream, tenantChainId } from "./event.ts";

/**
 * Exports a tenant's chain as JSON Lines: one line per event, in sequence order, each the canonical form
 * (canonical.ts) of the event with its `hash` property added. Anyone can verify it without Charter's code:
 * for each line, parse it, remove `hash`, canonicalize the rest, and check
 * hash = hex(SHA-256(hex-decoded prev ‖ canonical)), prev = the previous line's hash (64 zeros for the
 * first), and seq = 1, 2, 3, … (event.ts documents the shape). Personal details stay ciphertext, exactly as
 * hashed. The checkpoints and inclusion proofs that bind the last hash are appended by the checkpoint part.
 *
 * Read in batches, and handed to `write` line by line (each ends with "\n"), so a chain of
 * any length is never held in memory whole. Returns the number of events and the last hash.
 */
export async function exportChain(
  db: Database,
  chain: { tenantId: string; stream: Stream },
  write: (line: string) => void | Promise<void>,
  options: { batchSize?: number } = {},
): Promise<{ chainId: string; events: number; lastHash: string | null }> {
  let events = 0;
  let lastHash: string | null = null;
  for await (const batch of exportBatches(db, chain, options)) {
    for (const event of batch) await write(`${canonicalize(event)}\n`);
    events += batch.length;
    lastHash = batch.at(-1)?.hash ?? lastHash;
  }
  return { chainId: chainLocation(chain).chainId, events, lastHash };
}

function chainLocation(chain: { tenantId: string; stream: Stream }): ChainLocation & { tenantId: string } {
  if (!isUuid(chain.tenantId)) throw new TypeError(`the tenant must be a UUID, got "${chain.tenantId}"`);
  if (!isStream(chain.stream)) throw new TypeError(`unknown stream "${chain.stream}"`);
  const tenantId = chain.tenantId.toLowerCase();
  return { chainId: tenantChainId(tenantId, chain.stream), tenantId };
}

/**
 * The events of a tenant's chain in sequence order, a batch at a time, each batch read in a short tenant
 * transaction of its own and handed over after it ends, so that however slowly the consumer goes (an HTTP
 * client), no transaction stays open meanwhile. Append-only rows read by ascending sequence: later appends
 * only extend what is read, so the batches still make one consistent prefix of the chain.
 */
export async function* exportBatches(
  db: Database,
  chain: { tenantId: string; stream: Stream },
  options: { batchSize?: number } = {},
): AsyncGenerator<StoredEvent[]> {
  const location = chainLocation(chain);
  const batchSize = options.batchSize ?? 5_000;
  let after = 0;
  for (;;) {
    const batch: StoredEvent[] = await db.withTenant({ tenantId: location.tenantId }, (tx) =>
      eventsAfter(tx, location, after, batchSize),
    );
    if (batch.length > 0) yield batch;
    const last = batch.at(-1);
    if (!last || batch.length < batchSize) return;
    after = last.seq;
  }
}
