import type { CopyRows, Database, Tx } from "../db/index.ts";
import { isUuid } from "../ids.ts";
import {
  type ChainHead,
  type ChainLocation,
  chainHeads,
  eventAt,
  eventByHash,
  eventsAfter,
  type StreamedEvent,
  streamEvents,
} from "./chains.ts";
import { GENESIS_HASH, isStream, type StoredEvent, type Stream, storedEventHash, tenantChainId } from "./event.ts";

/**
 * Chain verification (promise L3): every event is recomputed from its stored columns and checked against
 * its hash, its sequence number and the previous event's hash, and the last event against the chain's head
 * row. It detects an event edited, deleted, inserted or moved by anyone who cannot also rewrite every later
 * event and the head. A rewrite of the chain with every hash recomputed and the head updated verifies here:
 * only the signed checkpoints, which name each head, catch it (checkpoints*.ts).
 *
 * All chains are read in one snapshot (REPEATABLE READ), so heads and events are one consistent state even
 * while appends go on. Each tenant's events (and the platform's) are streamed in one statement, ordered by
 * chain and sequence, and checked as they arrive, never held in memory whole; several tenants are read at
 * once, in transactions sharing the snapshot, so the database reads one while Node hashes another. A chain
 * that does not pass that check whole is verified again on its own, in pages through the driver, and that
 * second pass alone names the failure: the stream only ever clears chains.
 */

export const CHAIN_FAILURE_KINDS = [
  /** The event's columns no longer give its hash (any column edited, its hash included). */
  "edited",
  /** The sequence skips this number: the event was deleted. */
  "deleted",
  /** An event that was not appended through the chain sits here (or after the head). */
  "inserted",
  /** The event belongs at another sequence number of the chain. */
  "reordered",
  /** The head row does not name the chain's last event (a deleted tail, or an edited head). */
  "head-mismatch",
  /** Events of a chain that has no head row. */
  "missing-head",
] as const;
export type ChainFailureKind = (typeof CHAIN_FAILURE_KINDS)[number];

/** A failure of any check of `charter audit verify`; the chain checks use ChainFailureKind. */
export interface Failure {
  chainId: string;
  sequence: number;
  kind: string;
  /** One sentence for the report; names no personal data. */
  detail: string;
}

export interface ChainFailure extends Failure {
  kind: ChainFailureKind;
}

/** What a verification found; the checkpoint checks add their failures and counts to the same report. */
export interface VerifyReport {
  failures: Failure[];
  checked: { chains: number; events: number } & Record<string, number>;
}

export interface VerifyOptions {
  /** Only this tenant's chains (no platform chains). */
  tenantId?: string;
  stream?: Stream;
  /** Events read per query (default 5,000). */
  batchSize?: number;
}

const DEFAULT_BATCH = 5_000;
/** Tenants read at once: one transaction reads while Node checks another's events (two cores: database and Node). */
export const VERIFY_CONCURRENCY = 3;

function recompute(event: StoredEvent, seq: number): string | undefined {
  try {
    return storedEventHash(event, seq);
  } catch {
    // A stored value outside the canonical form (a fraction written into details) can only be an edit.
    return undefined;
  }
}

const intact = (event: StoredEvent, seq: number) => recompute(event, seq) === event.hash;

function failure(chainId: string, sequence: number, kind: ChainFailureKind, detail: string): ChainFailure {
  return { chainId, sequence, kind, detail };
}

/**
 * Names what happened at the first event that does not verify: `event` sits at sequence `seq`, where an
 * event chained to `prev` was expected. An event whose content still gives its hash under another sequence
 * number was moved: one place later means something was inserted before it, one place earlier means the
 * event before it was deleted and the rest renumbered (unless the two were swapped), anything else is a
 * reordering. The candidate numbers come from its neighbours by hash, read only on this failure path.
 */
async function classify(tx: Tx, chain: ChainLocation, event: StoredEvent, seq: number, prev: string) {
  const { chainId } = chain;
  if (recompute(event, seq) === event.hash) {
    return failure(
      chainId,
      seq - 1,
      "edited",
      "the event before this one was rewritten: this event does not chain to it",
    );
  }
  const before = await eventByHash(tx, chain, "hash", event.prev);
  const after = await eventByHash(tx, chain, "prev_hash", event.hash);
  const candidates = [seq - 1, seq + 1, ...(before ? [before.seq + 1] : []), ...(after ? [after.seq - 1] : [])];
  const moved = [...new Set(candidates)].find((s) => s >= 1 && s !== seq && intact(event, s));
  const next = await eventAt(tx, chain, seq + 1);
  if (moved === seq - 1) {
    return failure(chainId, seq - 1, "inserted", "an event was inserted here: the events after it were renumbered");
  }
  if (moved === seq + 1) {
    return next && intact(next, seq)
      ? failure(chainId, seq, "reordered", `the events at ${seq} and ${seq + 1} were swapped`)
      : failure(chainId, seq, "deleted", "the event here was deleted and the events after it renumbered");
  }
  if (moved !== undefined) {
    return failure(chainId, seq, "reordered", `the event here belongs at sequence ${moved}`);
  }
  if (next?.prev === prev && intact(next, seq)) {
    return failure(chainId, seq, "inserted", "an event was inserted here: the events after it were renumbered");
  }
  return failure(chainId, seq, "edited", "the event's columns do not give its hash");
}

/** Whether the head row names its own chain: its tenant and stream are those of its chain id. */
const headNamesChain = (head: ChainHead) =>
  head.tenantId === null
    ? head.chainId.startsWith(`platform/${head.stream}/`)
    : head.chainId === tenantChainId(head.tenantId, head.stream);

/** Verifies one chain against its head; returns the first failure, if any, and how many events it read. */
async function verifyChain(tx: Tx, head: ChainHead, batchSize: number) {
  const chain: ChainLocation = { chainId: head.chainId, tenantId: head.tenantId };
  let expected = 1;
  let prev = GENESIS_HASH;
  let events = 0;
  if (!headNamesChain(head)) {
    const f = failure(head.chainId, head.sequence, "head-mismatch", "the head row names another tenant or stream");
    return { failure: f, events };
  }
  let page = eventsAfter(tx, chain, 0, batchSize);
  for (;;) {
    const batch = await page;
    const more = batch.length === batchSize;
    // The next page is asked for before this one is hashed, so the database reads it while Node hashes. It
    // starts where this page ends if every event in it verifies, which is the only case it is used in.
    if (more) page = eventsAfter(tx, chain, expected - 1 + batch.length, batchSize);
    // On a failure the page in flight is awaited first: its error, if any, is the one to report.
    const stop = async (f: ChainFailure | (() => Promise<ChainFailure>)) => {
      if (more) await page;
      return { failure: typeof f === "function" ? await f() : f, events };
    };
    for (const event of batch) {
      events += 1;
      if (expected > head.sequence) {
        return stop(
          failure(head.chainId, event.seq, "inserted", `an event after the head (sequence ${head.sequence})`),
        );
      }
      if (event.seq > expected) {
        return stop(
          failure(head.chainId, expected, "deleted", `the sequence jumps from ${expected - 1} to ${event.seq}`),
        );
      }
      if (event.prev !== prev || !intact(event, expected)) {
        return stop(() => classify(tx, chain, event, expected, prev));
      }
      prev = event.hash;
      expected += 1;
    }
    if (!more) break;
  }
  const last = expected - 1;
  if (last < head.sequence) {
    const f = failure(
      head.chainId,
      last + 1,
      "head-mismatch",
      `the head is at ${head.sequence}, the events end at ${last}`,
    );
    return { failure: f, events };
  }
  if (prev !== head.hash) {
    const f = failure(head.chainId, head.sequence, "head-mismatch", "the head's hash is not the last event's hash");
    return { failure: f, events };
  }
  return { failure: undefined, events };
}

/** A chain as the stream checks it: where it has got to, and whether everything so far verified. */
interface Pass {
  head: ChainHead;
  expected: number;
  prev: string;
  events: number;
  clean: boolean;
}

/**
 * The streaming pass over one owner's events (a tenant's, or the platform's, null): every chain of `heads`
 * whose events all verify exactly as verifyChain would find them, with their counts, and the chains with
 * events but no head, with their first sequence. A chain left out of `clean` must go through verifyChain;
 * anything unusual (an event the stream cannot read as the driver would, any check failing) leaves it out.
 */
async function streamPass(copyRows: CopyRows, owner: string | null, stream: Stream | undefined, heads: ChainHead[]) {
  const byChain = new Map(heads.map((head) => [head.chainId, head]));
  const clean = new Map<string, number>();
  const headless: { chainId: string; first: number }[] = [];
  const seen = new Set<string>();
  let pass: Pass | undefined;
  let skipping: string | undefined;

  const settle = (p: Pass) => {
    if (p.clean && p.expected - 1 === p.head.sequence && p.prev === p.head.hash) clean.set(p.head.chainId, p.events);
  };
  const check = (p: Pass, event: StreamedEvent) => {
    p.events += 1;
    if (p.expected > p.head.sequence || event.seq !== p.expected || !event.prevIs(p.prev)) {
      p.clean = false;
      return;
    }
    const hash = event.hashAt(p.expected);
    if (hash === undefined || !event.hashIs(hash)) {
      p.clean = false;
      return;
    }
    p.prev = hash;
    p.expected += 1;
  };

  await streamEvents(copyRows, owner, stream, (streamed) => {
    if (pass !== undefined && streamed.chainIs(pass.head.chainId)) {
      if (pass.clean) check(pass, streamed);
      return;
    }
    if (skipping !== undefined && streamed.chainIs(skipping)) return;
    const { chainId } = streamed;
    if (pass) settle(pass);
    pass = undefined;
    skipping = undefined;
    seen.add(chainId);
    const head = byChain.get(chainId);
    if (head === undefined) {
      // Ordered by sequence within the chain: its first row has the lowest.
      headless.push({ chainId, first: streamed.seq });
      skipping = chainId;
      return;
    }
    pass = { head, expected: 1, prev: GENESIS_HASH, events: 0, clean: headNamesChain(head) };
    if (pass.clean) check(pass, streamed);
  });
  if (pass) settle(pass);
  for (const head of heads) {
    if (!seen.has(head.chainId))
      settle({ head, expected: 1, prev: GENESIS_HASH, events: 0, clean: headNamesChain(head) });
  }
  return { clean, headless };
}

/**
 * Verifies chains (all, or one tenant's, or one stream's) and returns the first failure of each chain
 * that fails. Reads as the runtime role, one tenant at a time.
 */
export async function verifyChains(db: Database, options: VerifyOptions = {}): Promise<VerifyReport> {
  const { tenantId, stream } = options;
  if (tenantId !== undefined && !isUuid(tenantId)) throw new TypeError(`the tenant must be a UUID, got "${tenantId}"`);
  if (stream !== undefined && !isStream(stream)) throw new TypeError(`unknown stream "${stream}"`);
  const batchSize = options.batchSize ?? DEFAULT_BATCH;
  if (!Number.isSafeInteger(batchSize) || batchSize < 1) throw new TypeError("batchSize must be a positive integer");
  const tenant = tenantId?.toLowerCase();
  const report: VerifyReport = { failures: [], checked: { chains: 0, events: 0 } };

  async function visit(tx: Tx, copyRows: CopyRows, owner: string | null, heads: ChainHead[]) {
    const { clean, headless } = await streamPass(copyRows, owner, stream, heads);
    for (const head of heads) {
      report.checked.chains += 1;
      const events = clean.get(head.chainId);
      if (events !== undefined) {
        report.checked.events += events;
        continue;
      }
      const { failure: f, events: read } = await verifyChain(tx, head, batchSize);
      report.checked.events += read;
      if (f) report.failures.push(f);
    }
    const inStream = (chainId: string) =>
      stream === undefined ||
      (owner === null ? chainId.startsWith(`platform/${stream}/`) : chainId.endsWith(`/${stream}`));
    for (const { chainId, first } of headless) {
      if (!inStream(chainId)) continue;
      report.failures.push(failure(chainId, first, "missing-head", "events of a chain that has no head row"));
    }
  }

  await db.withSnapshot(
    async (snapshot) => {
      const heads = (await chainHeads(snapshot.tx)).filter((h) => stream === undefined || h.stream === stream);
      const byTenant = new Map<string | null, ChainHead[]>();
      for (const head of heads) {
        const list = byTenant.get(head.tenantId);
        if (list) list.push(head);
        else byTenant.set(head.tenantId, [head]);
      }
      await snapshot.forEachTenant(
        async (id, tx, copyRows) => {
          if (tenant !== undefined && id !== tenant) return;
          await visit(tx, copyRows, id, byTenant.get(id) ?? []);
        },
        { concurrency: VERIFY_CONCURRENCY },
      );
      if (tenant === undefined) await visit(snapshot.tx, snapshot.copyRows, null, byTenant.get(null) ?? []);
    },
    // Each owner's events stream in the order of the (tenant, chain, sequence) key.
    { indexOrderReads: true },
  );
  report.failures.sort((a, b) => (a.chainId < b.chainId ? -1 : a.chainId > b.chainId ? 1 : a.sequence - b.sequence));
  return report;
}
