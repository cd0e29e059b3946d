import type { CommandResult } from "../cli/control-socket.ts";
import type { Clock } from "../clock.ts";
import type { SigningKey } from "../crypto/signing-key.ts";
import type { Database, Tx } from "../db/index.ts";
import type { Cadence, Jobs } from "../jobs/index.ts";
import { canonicalize } from "./canonical.ts";
import { chainHeads } from "./chains.ts";
import {
  type CheckpointHead,
  type CheckpointRecord,
  type CheckpointVerifier,
  compareChains,
  GENESIS,
  headLeafHash,
  type SignedCheckpoint,
  signatureValid,
  signCheckpoint,
} from "./checkpoint-record.ts";
import {
  appendCheckpointLine,
  type FileCheckpoint,
  insertCheckpointRow,
  isUnreadable,
  lastCheckpointRow,
  lastFileCheckpoint,
  readCheckpointFiles,
  readCheckpointRows,
  type Unreadable,
} from "./checkpoint-store.ts";
import { inclusionProof, merkleRoot } from "./merkle.ts";
import type { VerifyReport } from "./verify.ts";
import "./schema.ts";

/**
 * Signed checkpoints over every audit chain head (issue 4, promise L3). A checkpoint reads all heads in one
 * query, builds the Merkle tree over them (merkle.ts, leaves as checkpoint-record.ts describes) and signs the
 * root with the platform's Ed25519 key, chained to the checkpoint before. It is kept twice, in the table
 * audit_checkpoints and in the daily files of `checkpoints/` (checkpoint-store.ts), which must agree.
 *
 * What this catches: any rewrite of a chain below a checkpointed head, even with every hash recomputed and
 * the head updated, because the chain's hash at that sequence no longer matches what was signed; a
 * checkpoint removed from the table or the files; a checkpoint not signed by the platform key. What it
 * cannot catch: events removed after the last checkpoint, together with their head rolled back (at most one
 * interval of events, a minute by default), and the files and the table rolled back together to the same
 * checkpoint.
 *
 * Limits, stated plainly: checkpoints are serialised within a process and by the table's unique seq between
 * processes, but each process writes the files of its own data directory, so a deployment of several
 * processes on one PostgreSQL needs `checkpoints/` on storage they share. Verification reads every
 * checkpoint file whole.
 */

export const CHECKPOINT_JOB = "audit.checkpoint";
export const CHECKPOINT_CADENCE = { kind: "every", minutes: 1 } as const satisfies Cadence;
/** The chain id under which problems of the checkpoints themselves are reported. */
export const CHECKPOINT_CHAIN = "checkpoints";

export interface CheckpointWriter {
  db: Database;
  clock: Clock;
  /** The data directory's `checkpoints/`. */
  dir: string;
  signingKey: SigningKey;
}

/** A checkpoint with the heads it covers. */
export interface Checkpoint extends SignedCheckpoint {
  heads: CheckpointHead[];
}

/** A checkpoint cannot be made: the store disagrees with itself. The message names what and the next step. */
export class CheckpointError extends Error {
  override name = "CheckpointError";
}

/** Every chain head, read in one query (chains.ts), in tree order. */
async function readHeads(tx: Tx): Promise<CheckpointHead[]> {
  return (await chainHeads(tx))
    .map((h) => ({ chain: h.chainId, seq: h.sequence, hash: h.hash }))
    .sort((a, b) => compareChains(a.chain, b.chain));
}

const describe = (entry: SignedCheckpoint | Unreadable | undefined) =>
  entry === undefined
    ? "no checkpoint"
    : isUnreadable(entry)
      ? `an unreadable entry (${entry.where})`
      : `checkpoint ${entry.record.seq}`;

async function write(writer: CheckpointWriter): Promise<Checkpoint> {
  const { db, clock, dir, signingKey } = writer;
  return db.withPlatform(async (tx) => {
    const heads = await readHeads(tx);
    const lastRow = await lastCheckpointRow(tx);
    const lastLine = lastFileCheckpoint(dir);
    const rowHash = lastRow && !isUnreadable(lastRow) ? lastRow.hash : undefined;
    const lineHash = lastLine && !isUnreadable(lastLine) ? lastLine.hash : undefined;
    // Going on would chain new checkpoints to one of two histories and bury the evidence of the other.
    if ((lastRow !== undefined || lastLine !== undefined) && (rowHash === undefined || rowHash !== lineHash)) {
      throw new CheckpointError(
        `the checkpoint table ends at ${describe(lastRow)} but the files in ${dir} end at ${describe(lastLine)}: ` +
          "no checkpoint is made until this is resolved; run charter audit verify",
      );
    }
    const previous = lastRow && !isUnreadable(lastRow) ? lastRow : undefined;
    // Time never runs backwards along the chain (nor across the daily files), whatever the clock does.
    const now = clock.now().toISOString();
    const at = previous && previous.record.at > now ? previous.record.at : now;
    const record: CheckpointRecord = {
      v: 1,
      type: "checkpoint",
      seq: (previous?.record.seq ?? 0) + 1,
      at,
      root: merkleRoot(heads.map(headLeafHash)),
      leaves: heads.length,
      prev: previous?.hash ?? GENESIS,
      keyId: signingKey.keyId,
    };
    const signed = signCheckpoint(record, signingKey);
    // The row first: a concurrent checkpoint of the same seq fails here, before anything reaches the file.
    await insertCheckpointRow(tx, signed);
    await appendCheckpointLine(dir, signed, heads);
    return { ...signed, heads };
  });
}

const queues = new Map<string, Promise<unknown>>();

/**
 * Makes, signs and stores one checkpoint over every chain head. Serialised per checkpoint directory within
 * the process; refuses (CheckpointError) while the table and the files disagree about the last checkpoint.
 */
export function createCheckpoint(writer: CheckpointWriter): Promise<Checkpoint> {
  const before = queues.get(writer.dir) ?? Promise.resolve();
  const result = before.then(() => write(writer));
  const settled = result.catch(() => {});
  queues.set(writer.dir, settled);
  void settled.then(() => {
    if (queues.get(writer.dir) === settled) queues.delete(writer.dir);
  });
  return result;
}

/** `charter audit checkpoint`: makes one checkpoint now; a store that disagrees with itself fails the command. */
export async function checkpointCommand(writer: CheckpointWriter): Promise<CommandResult> {
  try {
    const { record } = await createCheckpoint(writer);
    return {
      exitCode: 0,
      output: `checkpoint ${record.seq} at ${record.at}: ${record.leaves} chains, root ${record.root}, key ${record.keyId}`,
    };
  } catch (error) {
    if (error instanceof CheckpointError) return { exitCode: 1, output: `charter: ${error.message}` };
    throw error;
  }
}

/** Defines the checkpoint job and its schedule (every minute by default) on the queue, before it starts. */
export function scheduleCheckpoints(jobs: Jobs, writer: CheckpointWriter, cadence: Cadence = CHECKPOINT_CADENCE): void {
  jobs.define(CHECKPOINT_JOB, async () => {
    await createCheckpoint(writer);
  });
  jobs.schedule(CHECKPOINT_JOB, cadence);
}

export type CheckpointProblemKind =
  /** A file line or table row that is not a checkpoint as written: altered or damaged. */
  | "checkpoint-malformed"
  /** Not signed by the platform's current key, or the signature does not verify. */
  | "checkpoint-signature"
  /** The files do not number their checkpoints 1, 2, 3…: lines removed, inserted or reordered. */
  | "checkpoint-sequence"
  /** A checkpoint's prev is not the hash of the one before it, or the one before is gone from both stores. */
  | "checkpoint-link"
  /** The heads in the file do not build the signed root. */
  | "checkpoint-root"
  /** In the files but not in the table: a row deleted. */
  | "checkpoint-row-missing"
  /** In the table but not in the files: the files rolled back or truncated. */
  | "checkpoint-file-missing"
  /** The table and the files hold different checkpoints under one number. */
  | "checkpoint-mismatch"
  /** A checkpointed chain has no head any more. */
  | "chain-missing"
  /** A chain's head is below a checkpointed sequence: events were removed. */
  | "chain-truncated"
  /** The chain's hash at a checkpointed sequence is not the signed one: its events were rewritten. */
  | "chain-rewritten";

/** One failure: the chain (CHECKPOINT_CHAIN for the checkpoints themselves), the sequence, the kind. */
export interface CheckpointProblem {
  chainId: string;
  sequence: number;
  kind: CheckpointProblemKind;
  detail: string;
}

export interface CheckpointReport {
  /** How many checkpoints the table and the files hold between them. */
  checkpoints: number;
  /** The newest checkpoint whose heads were compared with the chains. */
  latest: CheckpointRecord | undefined;
  /** The same checkpoint with its signature and hash, for a report that shows it to be checked again. */
  latestSigned: SignedCheckpoint | undefined;
  problems: CheckpointProblem[];
}

export interface VerifyCheckpointsOptions {
  db: Database;
  dir: string;
  verifier: CheckpointVerifier;
}

const TENANT_CHAIN = /^tenant\/([0-9a-f-]{36})\//;
/** Sequences per query: a busy chain may have been checkpointed at a thousand sequences a day. */
const BATCH = 1000;

/**
 * The hash each event stores at the given sequences of a chain (a tenant's chain read as that tenant, under
 * row-level security). The chains' own verification shows that every stored hash is the hash of its event
 * chained to the one before, so a stored hash that matches a checkpointed one vouches for every event up to it.
 */
async function storedHashes(db: Database, chainId: string, sequences: readonly number[]): Promise<Map<number, string>> {
  const found = new Map<number, string>();
  const tenantId = TENANT_CHAIN.exec(chainId)?.[1];
  for (let i = 0; i < sequences.length; i += BATCH) {
    const batch = sequences.slice(i, i + BATCH);
    const rows = tenantId
      ? await db.selectAsTenant({ tenantId }, (q) =>
          q
            .selectFrom("audit_events")
            .select(["seq", "hash"])
            .where("tenant_id", "=", tenantId)
            .where("chain_id", "=", chainId)
            .where("seq", "in", batch),
        )
      : await db.withPlatform((tx) =>
          tx
            .selectFrom("platform_audit_events")
            .select(["seq", "hash"])
            .where("chain_id", "=", chainId)
            .where("seq", "in", batch)
            .execute(),
        );
    for (const row of rows) found.set(row.seq, row.hash);
  }
  return found;
}

function checkpointProblem(sequence: number, kind: CheckpointProblemKind, detail: string): CheckpointProblem {
  return { chainId: CHECKPOINT_CHAIN, sequence, kind, detail };
}

function rootProblem(entry: FileCheckpoint): string | undefined {
  const { heads, record } = entry;
  for (let i = 1; i < heads.length; i++) {
    if (compareChains((heads[i - 1] as CheckpointHead).chain, (heads[i] as CheckpointHead).chain) >= 0) {
      return `${entry.where}: the heads are not sorted by chain, or a chain appears twice`;
    }
  }
  if (heads.length !== record.leaves) return `${entry.where}: ${heads.length} heads, the record signs ${record.leaves}`;
  if (merkleRoot(heads.map(headLeafHash)) !== record.root)
    return `${entry.where}: the heads do not build the signed root`;
  return undefined;
}

/** Checks the checkpoints against each other, the two stores against each other, and the signatures. */
function checkStores(
  lines: (FileCheckpoint | Unreadable)[],
  rows: (SignedCheckpoint | Unreadable)[],
  verifier: CheckpointVerifier,
): { problems: CheckpointProblem[]; verified: FileCheckpoint[]; count: number } {
  const problems: CheckpointProblem[] = [];
  const files = new Map<number, FileCheckpoint>();
  const table = new Map<number, SignedCheckpoint>();
  let expected = 1;
  for (const line of lines) {
    if (isUnreadable(line)) {
      problems.push(
        checkpointProblem(line.seq ?? expected, "checkpoint-malformed", `${line.where} is not a checkpoint`),
      );
      expected = (line.seq ?? expected) + 1;
      continue;
    }
    const { seq } = line.record;
    if (seq !== expected || files.has(seq)) {
      problems.push(
        checkpointProblem(seq, "checkpoint-sequence", `${line.where} is checkpoint ${seq}, expected ${expected}`),
      );
    }
    if (!files.has(seq)) files.set(seq, line);
    expected = seq + 1;
  }
  for (const row of rows) {
    if (isUnreadable(row)) {
      problems.push(checkpointProblem(row.seq ?? 0, "checkpoint-malformed", `${row.where} is not a checkpoint`));
    } else table.set(row.record.seq, row);
  }
  const seqs = [...new Set([...files.keys(), ...table.keys()])].sort((a, b) => a - b);
  const verified: FileCheckpoint[] = [];
  const hashes = new Map<number, string>();
  for (const seq of seqs) {
    const line = files.get(seq);
    const row = table.get(seq);
    if (line && !row) problems.push(checkpointProblem(seq, "checkpoint-row-missing", `${line.where} has no row`));
    if (row && !line) {
      problems.push(checkpointProblem(seq, "checkpoint-file-missing", `audit_checkpoints row ${seq} is in no file`));
    }
    if (line && row && (line.hash !== row.hash || line.sig !== row.sig)) {
      problems.push(checkpointProblem(seq, "checkpoint-mismatch", `${line.where} differs from its row`));
    }
    const entry = (line ?? row) as SignedCheckpoint;
    const signedBy = [line, row].filter((e): e is SignedCheckpoint => e !== undefined);
    if (!signedBy.every((e) => signatureValid(e, verifier))) {
      problems.push(
        checkpointProblem(
          seq,
          "checkpoint-signature",
          `checkpoint ${seq} names key ${entry.record.keyId}; its signature is not the platform key ${verifier.keyId}'s`,
        ),
      );
    }
    const before = seq === 1 ? GENESIS : hashes.get(seq - 1);
    if (entry.record.prev !== before) {
      problems.push(
        checkpointProblem(
          seq,
          "checkpoint-link",
          before === undefined
            ? `checkpoint ${seq - 1} is in neither the table nor the files`
            : `checkpoint ${seq} does not follow checkpoint ${seq - 1}`,
        ),
      );
    }
    hashes.set(seq, entry.hash);
    if (line) {
      const wrongRoot = rootProblem(line);
      if (wrongRoot) problems.push(checkpointProblem(seq, "checkpoint-root", wrongRoot));
      else if (signatureValid(line, verifier)) verified.push(line);
    }
  }
  return { problems, verified, count: seqs.length };
}

/** Compares every chain with what the verified checkpoints signed about it. */
async function checkChains(
  verified: readonly FileCheckpoint[],
  heads: readonly CheckpointHead[],
  db: Database,
): Promise<CheckpointProblem[]> {
  const problems: CheckpointProblem[] = [];
  const current = new Map(heads.map((h) => [h.chain, h]));
  // Every (sequence → hash) each chain was ever checkpointed at: a rewrite that a later checkpoint signed in
  // good faith still shows against the checkpoints from before it.
  const signed = new Map<string, Map<number, { hash: string; checkpoint: number }>>();
  for (const checkpoint of verified) {
    for (const head of checkpoint.heads) {
      const bySeq = signed.get(head.chain) ?? new Map<number, { hash: string; checkpoint: number }>();
      signed.set(head.chain, bySeq);
      const seen = bySeq.get(head.seq);
      if (seen && seen.hash !== head.hash) {
        problems.push({
          chainId: head.chain,
          sequence: head.seq,
          kind: "chain-rewritten",
          detail: `checkpoints ${seen.checkpoint} and ${checkpoint.record.seq} signed different hashes at this sequence`,
        });
      }
      if (!seen) bySeq.set(head.seq, { hash: head.hash, checkpoint: checkpoint.record.seq });
    }
  }
  const latest = verified.at(-1);
  for (const [chain, bySeq] of [...signed].sort(([a], [b]) => compareChains(a, b))) {
    const head = current.get(chain);
    const inLatest = latest?.heads.some((h) => h.chain === chain) ?? false;
    if (!head) {
      if (inLatest) {
        const seq = Math.max(...bySeq.keys());
        problems.push({
          chainId: chain,
          sequence: seq,
          kind: "chain-missing",
          detail: "the chain has no head any more",
        });
      }
      continue;
    }
    const sequences = [...bySeq.keys()].sort((a, b) => a - b);
    const highest = sequences.at(-1) as number;
    if (head.seq < highest) {
      problems.push({
        chainId: chain,
        sequence: head.seq + 1,
        kind: "chain-truncated",
        detail: `the head is at ${head.seq}, checkpoint ${bySeq.get(highest)?.checkpoint} signed ${highest}`,
      });
    }
    // The head's own hash stands for its event; below it, the events' stored hashes do.
    const below = sequences.filter((seq) => seq >= 1 && seq < head.seq);
    const hashes = below.length > 0 ? await storedHashes(db, chain, below) : new Map<number, string>();
    hashes.set(head.seq, head.hash);
    hashes.set(0, GENESIS);
    const first = sequences.find((seq) => seq <= head.seq && hashes.get(seq) !== bySeq.get(seq)?.hash);
    if (first !== undefined) {
      problems.push({
        chainId: chain,
        sequence: first,
        kind: "chain-rewritten",
        detail: `the chain up to ${first} does not hash to what checkpoint ${bySeq.get(first)?.checkpoint} signed`,
      });
    }
  }
  return problems;
}

/**
 * Verifies the checkpoints: signatures (by `verifier`, the platform's current key), links, the table against
 * the files, each file checkpoint's heads against its root, and every chain against what the checkpoints
 * signed about it. Reports each failure with chain, sequence and kind; modifies nothing.
 */
export async function verifyCheckpoints(options: VerifyCheckpointsOptions): Promise<CheckpointReport> {
  const { db, dir, verifier } = options;
  const { lines, rows, heads } = await readStores(db, dir);
  const { problems, verified, count } = checkStores(lines, rows, verifier);
  problems.push(...(await checkChains(verified, heads, db)));
  const latest = verified.at(-1);
  const latestSigned = latest && { record: latest.record, sig: latest.sig, hash: latest.hash };
  return { checkpoints: count, latest: latest?.record, latestSigned, problems };
}

/** How long a checkpoint's row may take to commit after its line is flushed, at most. */
const COMMIT_GRACE_MS = 500;

/**
 * The files first, then the table and the heads: every head is then at least as new as what the files
 * checkpointed. A line is flushed just before its row commits, so a line newer than the table is looked for
 * once more after a moment before it counts as a row deleted.
 */
async function readStores(db: Database, dir: string) {
  const lines = readCheckpointFiles(dir);
  const read = () =>
    db.withPlatform(async (tx) => ({ rows: await readCheckpointRows(tx), heads: await readHeads(tx) }));
  let { rows, heads } = await read();
  const newest = (entries: { seq?: number; record?: { seq: number } }[]) =>
    Math.max(0, ...entries.map((e) => e.record?.seq ?? e.seq ?? 0));
  if (newest(lines) > newest(rows)) {
    await new Promise((resolve) => setTimeout(resolve, COMMIT_GRACE_MS));
    ({ rows, heads } = await read());
  }
  return { lines, rows, heads };
}

/** One checkpoint covering a chain, with what an independent verifier needs to check it for that chain alone. */
export interface ChainCheckpoint {
  record: CheckpointRecord;
  /** base64url Ed25519 signature over `charter/audit-checkpoint/v1`, NUL, canonical(record). */
  sig: string;
  /** The chain's head as this checkpoint signed it. */
  head: CheckpointHead;
  /** The head's leaf position in the tree, and its RFC 6962 audit path to `record.root`. */
  index: number;
  proof: string[];
}

/**
 * The checkpoints that cover a chain, for its export: the first checkpoint to sign each sequence the chain was
 * checkpointed at, and the latest one that names the chain, each with the inclusion proof of the chain's head.
 * Nothing of other chains is disclosed but sibling hashes. Read from the files, verified against the table and
 * the signatures first: a store that does not verify is refused (CheckpointError).
 */
export async function checkpointsForChain(options: {
  db: Database;
  dir: string;
  verifier: CheckpointVerifier;
  chainId: string;
}): Promise<ChainCheckpoint[]> {
  const { chainId, ...store } = options;
  return (await checkpointsForChains({ ...store, chainIds: [chainId] })).get(chainId) ?? [];
}

/**
 * checkpointsForChain for several chains at once (a tenant's three streams), reading and verifying the stores
 * once: every chain asked for is in the map, with no checkpoints when none covers it.
 */
export async function checkpointsForChains(options: {
  db: Database;
  dir: string;
  verifier: CheckpointVerifier;
  chainIds: readonly string[];
}): Promise<Map<string, ChainCheckpoint[]>> {
  const { db, dir, verifier, chainIds } = options;
  const { lines, rows } = await readStores(db, dir);
  const { problems, verified } = checkStores(lines, rows, verifier);
  if (problems.length > 0) {
    const first = problems[0] as CheckpointProblem;
    throw new CheckpointError(
      `the checkpoints do not verify (${first.kind} at checkpoint ${first.sequence}: ${first.detail}); run charter audit verify`,
    );
  }
  return new Map(chainIds.map((chainId) => [chainId, covering(verified, chainId)]));
}

/** The verified checkpoints that cover one chain, with the inclusion proof of its head in each. */
function covering(verified: readonly FileCheckpoint[], chainId: string): ChainCheckpoint[] {
  const chosen: FileCheckpoint[] = [];
  const seen = new Set<number>();
  for (const checkpoint of verified) {
    const head = checkpoint.heads.find((h) => h.chain === chainId);
    if (head && !seen.has(head.seq)) {
      seen.add(head.seq);
      chosen.push(checkpoint);
    }
  }
  const latest = verified.findLast((c) => c.heads.some((h) => h.chain === chainId));
  if (latest && chosen.at(-1) !== latest) chosen.push(latest);
  return chosen.map((checkpoint) => {
    const index = checkpoint.heads.findIndex((h) => h.chain === chainId);
    return {
      record: checkpoint.record,
      sig: checkpoint.sig,
      head: checkpoint.heads[index] as CheckpointHead,
      index,
      proof: inclusionProof(checkpoint.heads.map(headLeafHash), index),
    };
  });
}

/**
 * The checkpoint part of `charter audit verify`: adds the checkpoints' failures to the chains' report, and how
 * many checkpoints were checked. With a tenant or stream, failures of other chains are left out; failures of
 * the checkpoints themselves are always reported. Returns the newest checkpoint that verified, if any.
 */
export async function verifyCheckpointsReport(
  report: VerifyReport,
  options: VerifyCheckpointsOptions & { tenantId?: string; stream?: string },
): Promise<SignedCheckpoint | undefined> {
  const { tenantId, stream } = options;
  const result = await verifyCheckpoints(options);
  const concerns = (chainId: string) =>
    chainId === CHECKPOINT_CHAIN ||
    ((tenantId === undefined || chainId.startsWith(`tenant/${tenantId.toLowerCase()}/`)) &&
      (stream === undefined || chainId.endsWith(`/${stream}`) || chainId.startsWith(`platform/${stream}/`)));
  report.failures.push(...result.problems.filter((p) => concerns(p.chainId)));
  report.checked.checkpoints = result.checkpoints;
  return result.latestSigned;
}

/**
 * The checkpoint check in the shape `charter audit verify` takes its checks (cli.ts VerifyCheck), for the
 * checkpoints in `dir` and the platform's public key.
 */
export function checkpointCheck(store: { dir: string; verifier: CheckpointVerifier }) {
  return async (
    db: Database,
    report: VerifyReport,
    options: { tenantId?: string; stream?: string },
  ): Promise<VerifyReport> => {
    await verifyCheckpointsReport(report, { db, ...store, ...options });
    return report;
  };
}

/**
 * Appends the checkpoints covering a chain to its export (export.ts), one canonical JSON line each:
 * `{"checkpoint":{"head":…,"index":…,"proof":[…],"record":{…},"sig":…}}`. Returns how many.
 */
export async function exportChainCheckpoints(
  options: Parameters<typeof checkpointsForChain>[0],
  write: (line: string) => void | Promise<void>,
): Promise<number> {
  const covering = await checkpointsForChain(options);
  for (const checkpoint of covering) await write(`${canonicalize({ checkpoint })}\n`);
  return covering.length;
}
