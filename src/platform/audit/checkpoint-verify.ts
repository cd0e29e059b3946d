import type { Database } from "../db/index.ts";
import { canonicalize } from "./canonical.ts";
import { type HeadChange, HeadSet } from "./checkpoint-heads.ts";
import {
  type CheckpointHead,
  type CheckpointRecord,
  type CheckpointVerifier,
  compareChains,
  firstKey,
  GENESIS,
  type KeyRotationRecord,
  recordName,
  rotatedKey,
  type SignedCheckpoint,
  type SignedKeyRotation,
  type SignedRecord,
  signatureValid,
} from "./checkpoint-record.ts";
import { isUnreadable, readCheckpointLines, readCheckpointRows, type Unreadable } from "./checkpoint-store.ts";
import { CheckpointError, readHeads } from "./checkpoints.ts";
import { inclusionProof, merkleRoot } from "./merkle.ts";
import type { VerifyReport } from "./verify.ts";

/**
 * Verification of the checkpoint chain (promise L3), and the checkpoints an export carries. Two passes over
 * the files, each reading them line by line: the first checks the records of both stores against each other
 * and against the key current at each place in the chain (keeping the records, never the heads); the second
 * rebuilds each checkpoint's full set of heads from the lines' changes, checks it against the signed root,
 * and hands each verified checkpoint to whoever needs it (the chains' check, or an export's proofs) while its
 * heads are at hand.
 */

/** The chain id under which problems of the checkpoints themselves are reported. */
export const CHECKPOINT_CHAIN = "checkpoints";

export type CheckpointProblemKind =
  /** A file line or table row that is not a record as written: altered or damaged. */
  | "checkpoint-malformed"
  /** Not signed by the key current at its place in the chain, or a key rotation that does not prove its key. */
  | "checkpoint-signature"
  /** The files do not number their records 1, 2, 3…: lines removed, inserted or reordered. */
  | "checkpoint-sequence"
  /** A record's prev is not the hash of the one before it, or the one before is gone from both stores. */
  | "checkpoint-link"
  /** The heads rebuilt from the files do not build the signed root. */
  | "checkpoint-root"
  /** In the files but not in the table: a row deleted. */
  | "checkpoint-row-missing"
  /** In the table but not in the files: the files rolled back or truncated. */
  | "checkpoint-file-missing"
  /** The table and the files hold different records under one number. */
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
  /** How many records the table and the files hold between them. */
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

/** A record read from a file, without the heads its line carries (the second pass reads those). */
type LineRecord = SignedRecord & { where: string };

/** What the first pass learns of the chain of records. */
interface RecordsCheck {
  problems: CheckpointProblem[];
  /** How many records the table and the files hold between them. */
  count: number;
  /** The records whose first file line is signed by the key current at its place. */
  signedLines: Set<number>;
  /** The rotations that handed signing on, in chain order. */
  rotations: SignedKeyRotation[];
}

/**
 * Checks the records against each other, the two stores against each other, and each signature against the
 * key current at its place: the platform's first key, then each key a valid rotation hands signing to.
 */
function checkRecords(
  lines: readonly (LineRecord | Unreadable)[],
  rows: readonly (SignedRecord | Unreadable)[],
  verifier: CheckpointVerifier,
): RecordsCheck {
  const problems: CheckpointProblem[] = [];
  const files = new Map<number, LineRecord>();
  const table = new Map<number, SignedRecord>();
  let expected = 1;
  for (const line of lines) {
    if (isUnreadable(line)) {
      problems.push(checkpointProblem(line.seq ?? expected, "checkpoint-malformed", `${line.where} is not a record`));
      expected = (line.seq ?? expected) + 1;
      continue;
    }
    const { seq } = line.record;
    if (seq !== expected || files.has(seq)) {
      problems.push(
        checkpointProblem(seq, "checkpoint-sequence", `${line.where} is record ${seq}, expected ${expected}`),
      );
    }
    if (!files.has(seq)) files.set(seq, line);
    expected = seq + 1;
  }
  for (const row of rows) {
    if (isUnreadable(row)) {
      problems.push(checkpointProblem(row.seq ?? 0, "checkpoint-malformed", `${row.where} is not a record`));
    } else table.set(row.record.seq, row);
  }
  const seqs = [...new Set([...files.keys(), ...table.keys()])].sort((a, b) => a - b);
  const signedLines = new Set<number>();
  const rotations: SignedKeyRotation[] = [];
  const hashes = new Map<number, string>();
  let key = firstKey(verifier);
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
    const entry = (line ?? row) as SignedRecord;
    const lineSigned = line !== undefined && signatureValid(line, key);
    const signed = (line === undefined || lineSigned) && (row === undefined || signatureValid(row, key));
    if (lineSigned) signedLines.add(seq);
    if (!signed) {
      problems.push(
        checkpointProblem(
          seq,
          "checkpoint-signature",
          `${recordName(entry)} names key ${entry.record.keyId}; its signature is not that of key ${key.keyId}, ` +
            "the key current at its place in the chain",
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
            ? `record ${seq - 1} is in neither the table nor the files`
            : `record ${seq} does not follow record ${seq - 1}`,
        ),
      );
    }
    hashes.set(seq, entry.hash);
    if (signed && entry.record.type === "key-rotation") {
      const next = rotatedKey(entry.record);
      if (next) {
        key = next;
        rotations.push(entry as SignedKeyRotation);
      } else {
        problems.push(
          checkpointProblem(
            seq,
            "checkpoint-signature",
            `key rotation ${seq} does not prove the new key ${entry.record.newKeyId}: signing stays with key ${key.keyId}`,
          ),
        );
      }
    }
  }
  const last = seqs.at(-1);
  if (last !== undefined && key.keyId !== verifier.keyId) {
    problems.push(
      checkpointProblem(
        last,
        "checkpoint-signature",
        `the chain hands signing to key ${key.keyId}, but the platform's signing key is ${verifier.keyId}, which ` +
          "no key rotation in the chain introduced",
      ),
    );
  }
  return { problems, count: seqs.length, signedLines, rotations };
}

/** A checkpoint whose line is signed and whose heads build its root, with its heads, while they are at hand. */
interface VerifiedCheckpoint {
  entry: SignedCheckpoint;
  change: HeadChange;
  /** Whether the checkpoint line before it was verified too, so that only `change` is new since then. */
  follows: boolean;
  /** The full set, valid during the call only: the next line changes it. */
  heads: HeadSet;
  /** Its leaf hashes in tree order, a copy of its own. */
  leaves: string[];
}

/**
 * The second pass: rebuilds each checkpoint's heads from the first `lineCount` lines (those the first pass
 * read) and checks them against its root; hands `visit` each checkpoint whose line the first pass found signed.
 * After a line that is unreadable or does not build its root, the set is unknown: later lines that do not
 * build theirs are not reported again, until a line lists every head or one builds its root once more.
 */
async function rebuildHeads(
  dir: string,
  lineCount: number,
  signedLines: ReadonlySet<number>,
  visit: (checkpoint: VerifiedCheckpoint) => void,
): Promise<CheckpointProblem[]> {
  const problems: CheckpointProblem[] = [];
  const heads = new HeadSet();
  const visited = new Set<number>();
  let known = true;
  let previousVisited = false;
  let read = 0;
  for await (const line of readCheckpointLines(dir)) {
    read += 1;
    // Appended since the first pass.
    if (read > lineCount) break;
    if (isUnreadable(line)) {
      known = false;
      previousVisited = false;
      continue;
    }
    const { change } = line;
    if (line.record.type !== "checkpoint" || !change) continue;
    const record = line.record;
    const checkable = known || change.base === "empty";
    const malformed =
      heads.apply(change) ??
      (heads.size === record.leaves ? undefined : `${heads.size} heads, the record signs ${record.leaves}`);
    const leaves = malformed ? [] : heads.leafHashes();
    const problem =
      malformed ?? (merkleRoot(leaves) === record.root ? undefined : "the heads do not build the signed root");
    if (problem) {
      if (checkable) problems.push(checkpointProblem(record.seq, "checkpoint-root", `${line.where}: ${problem}`));
      known = false;
      previousVisited = false;
      continue;
    }
    known = true;
    const first = !visited.has(record.seq);
    visited.add(record.seq);
    if (first && signedLines.has(record.seq)) {
      const entry: SignedCheckpoint = { record, sig: line.sig, hash: line.hash };
      visit({ entry, change, follows: previousVisited && change.base === "previous", heads, leaves });
      previousVisited = true;
    } else previousVisited = false;
  }
  return problems;
}

/** The files first, then the table and the heads: every head is then at least as new as what the files signed. */
async function readStores(db: Database, dir: string) {
  const lines: (LineRecord | Unreadable)[] = [];
  for await (const line of readCheckpointLines(dir)) {
    lines.push(isUnreadable(line) ? line : { record: line.record, sig: line.sig, hash: line.hash, where: line.where });
  }
  const read = () =>
    db.withPlatform(async (tx) => ({ rows: await readCheckpointRows(tx), heads: await readHeads(tx) }));
  let { rows, heads } = await read();
  const newest = (entries: readonly (SignedRecord | Unreadable)[]) =>
    Math.max(0, ...entries.map((e) => (isUnreadable(e) ? (e.seq ?? 0) : e.record.seq)));
  // A line is flushed just before its row commits: a line newer than the table is looked for once more after
  // a moment before it counts as a row deleted.
  if (newest(lines) > newest(rows)) {
    await new Promise((resolve) => setTimeout(resolve, COMMIT_GRACE_MS));
    ({ rows, heads } = await read());
  }
  return { lines, rows, heads };
}

/** How long a record's row may take to commit after its line is flushed, at most. */
const COMMIT_GRACE_MS = 500;

/**
 * Checks the whole chain of records, and rebuilds the heads of every checkpoint, handing each verified one to
 * `visit`. Returns the problems of the checkpoint chain itself, sorted by sequence.
 */
async function checkStores(
  db: Database,
  dir: string,
  verifier: CheckpointVerifier,
  visit: (checkpoint: VerifiedCheckpoint) => void,
) {
  const { lines, rows, heads } = await readStores(db, dir);
  const records = checkRecords(lines, rows, verifier);
  const rootProblems = await rebuildHeads(dir, lines.length, records.signedLines, visit);
  const problems = [...records.problems, ...rootProblems].sort((a, b) => a.sequence - b.sequence);
  return { problems, count: records.count, rotations: records.rotations, heads };
}

/** Every (sequence → hash) each chain was signed at by a verified checkpoint, and the chains of the latest one. */
function signedHeads() {
  // A rewrite that a later checkpoint signed in good faith still shows against the checkpoints from before it.
  const signed = new Map<string, Map<number, { hash: string; checkpoint: number }>>();
  const problems: CheckpointProblem[] = [];
  let latest: SignedCheckpoint | undefined;
  let latestChains = new Set<string>();
  const visit = ({ entry, change, follows, heads }: VerifiedCheckpoint) => {
    // After a verified line, only what this one changed is new; the rest was recorded with the line before.
    for (const head of follows ? change.changed : heads.heads()) {
      const bySeq = signed.get(head.chain) ?? new Map<number, { hash: string; checkpoint: number }>();
      signed.set(head.chain, bySeq);
      const seen = bySeq.get(head.seq);
      if (seen && seen.hash !== head.hash) {
        problems.push({
          chainId: head.chain,
          sequence: head.seq,
          kind: "chain-rewritten",
          detail: `checkpoints ${seen.checkpoint} and ${entry.record.seq} signed different hashes at this sequence`,
        });
      }
      if (!seen) bySeq.set(head.seq, { hash: head.hash, checkpoint: entry.record.seq });
    }
    if (follows) {
      for (const chain of change.removed) latestChains.delete(chain);
      for (const head of change.changed) latestChains.add(head.chain);
    } else latestChains = new Set(heads.chains());
    latest = entry;
  };
  return { visit, result: () => ({ signed, problems, latest, latestChains }) };
}

/** Compares every chain with what the verified checkpoints signed about it. */
async function checkChains(
  found: ReturnType<ReturnType<typeof signedHeads>["result"]>,
  heads: readonly CheckpointHead[],
  db: Database,
): Promise<CheckpointProblem[]> {
  const problems = [...found.problems];
  const current = new Map(heads.map((h) => [h.chain, h]));
  for (const [chain, bySeq] of [...found.signed].sort(([a], [b]) => compareChains(a, b))) {
    const head = current.get(chain);
    if (!head) {
      if (found.latestChains.has(chain)) {
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
 * Verifies the checkpoints: signatures (each by the key current at its place in the chain, starting from the
 * platform's first key in `verifier`), links, the table against the files, each checkpoint's rebuilt heads
 * against its root, and every chain against what the checkpoints signed about it. Reports each failure with
 * chain, sequence and kind; modifies nothing.
 */
export async function verifyCheckpoints(options: VerifyCheckpointsOptions): Promise<CheckpointReport> {
  const { db, dir, verifier } = options;
  const collected = signedHeads();
  const stores = await checkStores(db, dir, verifier, collected.visit);
  const found = collected.result();
  const problems = [...stores.problems, ...(await checkChains(found, stores.heads, db))];
  const latestSigned = found.latest && { record: found.latest.record, sig: found.latest.sig, hash: found.latest.hash };
  return { checkpoints: stores.count, latest: found.latest?.record, latestSigned, problems };
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
 * What follows a chain's events in its export, in the order of the chain of records: each checkpoint covering
 * it, and each key rotation (so that a verifier who holds the platform's first public key can follow signing
 * from key to key).
 */
export type CoveringRecord =
  | { checkpoint: ChainCheckpoint }
  | { keyRotation: { record: KeyRotationRecord; sig: string } };

const coveringSeq = (line: CoveringRecord) =>
  "checkpoint" in line ? line.checkpoint.record.seq : line.keyRotation.record.seq;

/** Collects, while the heads are rebuilt, the checkpoints that cover each chain, with their proofs. */
function coveringCheckpoints(chainIds: readonly string[]) {
  interface AtCheckpoint {
    entry: SignedCheckpoint;
    head: CheckpointHead;
    index: number;
    leaves: string[];
  }
  const proven = ({ entry, head, index, leaves }: AtCheckpoint): ChainCheckpoint => ({
    record: entry.record,
    sig: entry.sig,
    head,
    index,
    proof: inclusionProof(leaves, index),
  });
  const chains = new Map(
    chainIds.map((chainId) => [
      chainId,
      { seen: new Set<number>(), chosen: [] as ChainCheckpoint[], latest: undefined as AtCheckpoint | undefined },
    ]),
  );
  const visit = ({ entry, heads, leaves }: VerifiedCheckpoint) => {
    for (const [chainId, chain] of chains) {
      const head = heads.get(chainId);
      if (!head) continue;
      const at = { entry, head, index: heads.indexOf(chainId), leaves };
      // The first checkpoint to sign each sequence; the latest that names the chain is proven at the end.
      if (chain.seen.has(head.seq)) chain.latest = at;
      else {
        chain.seen.add(head.seq);
        chain.chosen.push(proven(at));
        chain.latest = undefined;
      }
    }
  };
  const result = () =>
    new Map(
      [...chains].map(([chainId, { chosen, latest }]) => [chainId, latest ? [...chosen, proven(latest)] : chosen]),
    );
  return { visit, result };
}

/**
 * The checkpoints that cover a chain, for its export: the first checkpoint to sign each sequence the chain was
 * checkpointed at, and the latest one that names the chain, each with the inclusion proof of the chain's head;
 * with every key rotation of the chain of records between them. Nothing of other chains is disclosed but
 * sibling hashes. Read from the files, verified against the table and the signatures first: a store that does
 * not verify is refused (CheckpointError).
 */
export async function checkpointsForChain(options: {
  db: Database;
  dir: string;
  verifier: CheckpointVerifier;
  chainId: string;
}): Promise<CoveringRecord[]> {
  const { chainId, ...store } = options;
  return (await checkpointsForChains({ ...store, chainIds: [chainId] })).get(chainId) ?? [];
}

/**
 * checkpointsForChain for several chains at once (a tenant's three streams), reading and verifying the stores
 * once: every chain asked for is in the map, with nothing when no checkpoint covers it.
 */
export async function checkpointsForChains(options: {
  db: Database;
  dir: string;
  verifier: CheckpointVerifier;
  chainIds: readonly string[];
}): Promise<Map<string, CoveringRecord[]>> {
  const { db, dir, verifier, chainIds } = options;
  const collected = coveringCheckpoints(chainIds);
  const { problems, rotations } = await checkStores(db, dir, verifier, collected.visit);
  const first = problems[0];
  if (first) {
    throw new CheckpointError(
      `the checkpoints do not verify (${first.kind} at checkpoint ${first.sequence}: ${first.detail}); run charter audit verify`,
    );
  }
  const keyRotations = rotations.map(({ record, sig }): CoveringRecord => ({ keyRotation: { record, sig } }));
  return new Map(
    [...collected.result()].map(([chainId, checkpoints]) => [
      chainId,
      checkpoints.length === 0
        ? []
        : [...checkpoints.map((checkpoint): CoveringRecord => ({ checkpoint })), ...keyRotations].sort(
            (a, b) => coveringSeq(a) - coveringSeq(b),
          ),
    ]),
  );
}

/**
 * The checkpoint part of `charter audit verify`: adds the checkpoints' failures to the chains' report, and how
 * many records were checked. With a tenant or stream, failures of other chains are left out; failures of the
 * checkpoints themselves are always reported. Returns the newest checkpoint that verified, if any.
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
 * checkpoints in `dir` and the platform's public keys.
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
 * Appends what covers a chain to its export (export.ts), one canonical JSON line each:
 * `{"checkpoint":{"head":…,"index":…,"proof":[…],"record":{…},"sig":…}}` or
 * `{"keyRotation":{"record":{…},"sig":…}}`. Returns how many checkpoints.
 */
export async function exportChainCheckpoints(
  options: Parameters<typeof checkpointsForChain>[0],
  write: (line: string) => void | Promise<void>,
): Promise<number> {
  const covering = await checkpointsForChain(options);
  for (const line of covering) await write(`${canonicalize(line)}\n`);
  return covering.filter((line) => "checkpoint" in line).length;
}
