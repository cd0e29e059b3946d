import { createHash, generateKeyPairSync } from "node:crypto";
import { appendFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";
import { manualClock } from "../clock.ts";
import { SigningKey } from "../crypto/signing-key.ts";
import { createTestKeyRing } from "../crypto/testing.ts";
import type { Database } from "../db/index.ts";
import { uuidv7 } from "../ids.ts";
import { eventually, testJobs } from "../jobs/testing.ts";
import { createTenant, type Tenant } from "../tenancy/tenants.ts";
import { type Audit, createAudit } from "./audit.ts";
import { canonicalize } from "./canonical.ts";
import { HeadSet } from "./checkpoint-heads.ts";
import { type CheckpointRecord, headLeafHash, signKeyRotation, signRecord } from "./checkpoint-record.ts";
import {
  CHECKPOINT_CHAIN,
  type ChainCheckpoint,
  type CoveringRecord,
  checkpointCheck,
  checkpointsForChain,
  verifyCheckpoints,
} from "./checkpoint-verify.ts";
import {
  appendKeyRotation,
  CHECKPOINT_JOB,
  CHECKPOINT_RECOVERED,
  CheckpointError,
  checkpointCommand,
  createCheckpoint,
  scheduleCheckpoints,
} from "./checkpoints.ts";
import { eventHash, hashedFields, platformChainId, type StoredEvent, SYSTEM_ACTOR, tenantChainId } from "./event.ts";
import { verifyInclusion } from "./merkle.ts";

const quote = (text: string) => `'${text.replaceAll("'", "''")}'`;
const checkpointsOf = (covering: CoveringRecord[]): ChainCheckpoint[] =>
  covering.flatMap((line) => ("checkpoint" in line ? [line.checkpoint] : []));

describe.each(DATABASE_KINDS)("audit checkpoints on %s (L3)", (kind) => {
  let t: TestDatabase | undefined;
  let dir: string | undefined;
  afterEach(async () => {
    await t?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
    t = undefined;
    dir = undefined;
  });

  /** A database with two tenants' chains of events and three checkpoints over them, the last one clean. */
  async function setup() {
    t = await openTestDatabase(kind);
    const db = t.db;
    dir = mkdtempSync(join(tmpdir(), "charter-checkpoints-"));
    const clock = manualClock("2026-06-01T23:58:00Z");
    const keyRing = createTestKeyRing(db, clock);
    const signingKey = new SigningKey(generateKeyPairSync("ed25519").privateKey);
    const audit: Audit = createAudit({ db, keyRing, clock });
    const tenants: Tenant[] = [];
    // Each tenant's changes chain opens with tenant.created (seq 1).
    for (const name of ["A", "B"]) {
      tenants.push(await createTenant(db, clock, { slug: `c-${uuidv7().slice(-12)}`, name }, keyRing, audit));
    }
    const [a, b] = tenants as [Tenant, Tenant];
    const events: StoredEvent[] = [];
    const append = async (tenant: Tenant, n: number) => {
      for (let i = 0; i < n; i++) {
        const event = await db.withTenant({ tenantId: tenant.id }, (tx) =>
          audit.record(tx, {
            tenantId: tenant.id,
            stream: "changes",
            actor: { kind: "system", id: null },
            action: "record.created",
            target: { type: "contact", id: uuidv7() },
            details: { n: events.length },
          }),
        );
        if (tenant === a) events.push(event);
      }
    };
    const writer = { db, clock, dir, signingKey };
    const checkpoint = async () => {
      const made = await createCheckpoint(writer);
      clock.advance(60_000);
      return made;
    };
    await append(a, 3);
    await append(b, 1);
    await checkpoint();
    await append(a, 2);
    await checkpoint();
    // Across midnight: the third checkpoint starts the next day's file.
    await checkpoint();
    const verify = (verifier: SigningKey = signingKey) => verifyCheckpoints({ db, dir: dir as string, verifier });
    return { db, t, dir, clock, audit, signingKey, writer, a, b, events, append, checkpoint, verify };
  }

  const files = (where: string) => readdirSync(where).sort();

  it("a clean log verifies: three checkpoints in two daily files, signed, linked, matching the table", async () => {
    const { verify, dir, a, b, writer } = await setup();
    expect(files(dir)).toEqual(["2026-06-01.jsonl", "2026-06-02.jsonl"]);
    const report = await verify();
    expect(report.problems).toEqual([]);
    expect(report.checkpoints).toBe(3);
    expect(report.latest).toMatchObject({ v: 1, type: "checkpoint", seq: 3, leaves: 2 });
    const chains = [tenantChainId(a.id, "changes"), tenantChainId(b.id, "changes")].sort();
    const lines = files(dir).flatMap((f) => readFileSync(join(dir, f), "utf8").trimEnd().split("\n"));
    // The first line of a day lists every head; the next ones only what changed since the line before.
    const parsed = lines.map((line) => JSON.parse(line));
    expect(parsed.map((l) => [l.v, l.base, l.changed.length, l.removed.length])).toEqual([
      [2, "empty", 2, 0],
      [2, "previous", 1, 0],
      [2, "empty", 2, 0],
    ]);
    expect(parsed[1].changed.map((h: { chain: string }) => h.chain)).toEqual([tenantChainId(a.id, "changes")]);
    expect(parsed.at(-1).changed.map((h: { chain: string }) => h.chain)).toEqual(chains);
    expect(parsed.map((l) => canonicalize(l))).toEqual(lines);
    expect(await checkpointCommand(writer)).toEqual({
      exitCode: 0,
      output: expect.stringMatching(/^checkpoint 4 at 2026-06-02T00:01:00.000Z: 2 chains, root [0-9a-f]{64}, key /),
    });
    expect((await verify()).problems).toEqual([]);
    // Checkpoints asked for at once are made one after the other.
    const made = await Promise.all([1, 2, 3].map(() => createCheckpoint(writer)));
    expect(made.map((c) => c.record.seq)).toEqual([5, 6, 7]);
    expect((await verify()).problems).toEqual([]);
  });

  if (kind === "postgres") {
    it("two processes checkpointing at once both succeed, one after the other", async () => {
      const { t, writer, verify } = await setup();
      const other = await t.open({ migrate: false });
      try {
        // Another process: its own connections, and its own in-process queue and memory of the last line
        // (keyed by the directory as it names it).
        const second = { ...writer, db: other, dir: `${writer.dir}/` };
        for (let i = 0; i < 3; i++) {
          const made = await Promise.all([createCheckpoint(writer), createCheckpoint(second)]);
          expect(made.map((c) => c.record.seq).sort()).toEqual([4 + 2 * i, 5 + 2 * i]);
        }
        expect((await verify()).problems).toEqual([]);
      } finally {
        await other.close();
      }
    });
  }

  it("the runtime role can neither change nor remove a checkpoint row", async () => {
    const { db } = await setup();
    await expect(db.withPlatform((tx) => tx.deleteFrom("audit_checkpoints").execute())).rejects.toThrow(
      /permission denied/,
    );
    await expect(
      db.withPlatform((tx) => tx.updateTable("audit_checkpoints").set({ signature: "x" }).execute()),
    ).rejects.toThrow(/permission denied/);
  });

  it("a checkpoint file rolled back is reported, and no checkpoint is made until it is resolved", async () => {
    const { verify, dir, checkpoint, writer } = await setup();
    // Back to the state after the first checkpoint: the second one gone from the first day's file, the
    // second day's file gone.
    const first = join(dir, "2026-06-01.jsonl");
    writeFileSync(first, `${readFileSync(first, "utf8").split("\n")[0]}\n`);
    rmSync(join(dir, "2026-06-02.jsonl"));
    const { problems } = await verify();
    expect(problems.map(({ chainId, sequence, kind }) => ({ chainId, sequence, kind }))).toEqual([
      { chainId: CHECKPOINT_CHAIN, sequence: 2, kind: "checkpoint-file-missing" },
      { chainId: CHECKPOINT_CHAIN, sequence: 3, kind: "checkpoint-file-missing" },
    ]);
    await expect(checkpoint()).rejects.toThrow(CheckpointError);
    expect(await checkpointCommand(writer)).toEqual({
      exitCode: 1,
      output: expect.stringMatching(/table ends at checkpoint 3 but the files .* end at checkpoint 1/),
    });
  });

  it("a checkpoint file truncated mid-line is reported; a torn tail is cut off before the next append", async () => {
    const { verify, dir, checkpoint } = await setup();
    const second = join(dir, "2026-06-02.jsonl");
    const text = readFileSync(second, "utf8");
    writeFileSync(second, text.slice(0, text.length - 10));
    const { problems } = await verify();
    expect(problems.map((p) => [p.sequence, p.kind])).toEqual([[3, "checkpoint-file-missing"]]);
    // A torn tail with the table intact: an append whose transaction never committed.
    writeFileSync(second, text);
    appendFileSync(second, '{"heads":[');
    expect((await verify()).problems).toEqual([]);
    const made = await checkpoint();
    expect(made.record.seq).toBe(4);
    expect((await verify()).problems).toEqual([]);
  });

  it("a checkpoint row deleted (as the superuser) is reported", async () => {
    const { verify, t, checkpoint, db, dir, signingKey, a } = await setup();
    await t.superuser("DELETE FROM audit_checkpoints WHERE seq = 2");
    // As charter audit verify reports it: beside the chains' failures, whatever tenant it is limited to.
    const report = await checkpointCheck({ dir, verifier: signingKey })(
      db,
      { failures: [], checked: { chains: 2, events: 8 } },
      { tenantId: a.id },
    );
    expect(report).toMatchObject({
      failures: [{ chainId: CHECKPOINT_CHAIN, sequence: 2, kind: "checkpoint-row-missing" }],
      checked: { chains: 2, events: 8, checkpoints: 3 },
    });
    const { problems } = await verify();
    expect(problems.map(({ chainId, sequence, kind }) => ({ chainId, sequence, kind }))).toEqual([
      { chainId: CHECKPOINT_CHAIN, sequence: 2, kind: "checkpoint-row-missing" },
    ]);
    await t.superuser("DELETE FROM audit_checkpoints WHERE seq = 3");
    expect((await verify()).problems.map((p) => [p.sequence, p.kind])).toEqual([
      [2, "checkpoint-row-missing"],
      [3, "checkpoint-row-missing"],
    ]);
    await expect(checkpoint()).rejects.toThrow(CheckpointError);
  });

  it("a chain rewritten with every hash recomputed and its head updated is reported, even once checkpointed again", async () => {
    const { verify, t, events, a, checkpoint } = await setup();
    const chain = tenantChainId(a.id, "changes");
    // Event 3 of A's chain gets other details; every hash from there on is recomputed, the head follows.
    let prev = (events[0] as StoredEvent).hash;
    const statements: string[] = [];
    for (const stored of events.slice(1)) {
      const forged = hashedFields({
        ...stored,
        details: stored.seq === 3 ? { n: 99 } : stored.details,
        prev,
      });
      prev = eventHash(forged);
      statements.push(
        `UPDATE audit_events SET details = ${quote(JSON.stringify(forged.details))}::jsonb,` +
          ` prev_hash = ${quote(forged.prev)}, hash = ${quote(prev)}` +
          ` WHERE chain_id = ${quote(chain)} AND seq = ${stored.seq}`,
      );
    }
    statements.push(`UPDATE audit_chain_heads SET hash = ${quote(prev)} WHERE chain_id = ${quote(chain)}`);
    await t.superuser(statements.join(";\n"));
    const reported = async () =>
      (await verify()).problems.map(({ chainId, sequence, kind }) => ({ chainId, sequence, kind }));
    // Checkpoint 1 signed A's chain at 4: the first checkpointed sequence at or after the rewrite.
    expect(await reported()).toEqual([{ chainId: chain, sequence: 4, kind: "chain-rewritten" }]);
    // The next checkpoint signs the forged head in good faith; the earlier ones still show the rewrite.
    await checkpoint();
    expect(await reported()).toEqual([
      { chainId: chain, sequence: 6, kind: "chain-rewritten" },
      { chainId: chain, sequence: 4, kind: "chain-rewritten" },
    ]);
  });

  it("a chain's tail removed below its checkpointed head is reported as truncated", async () => {
    const { verify, t, events, a } = await setup();
    const chain = tenantChainId(a.id, "changes");
    await t.superuser(
      `DELETE FROM audit_events WHERE chain_id = ${quote(chain)} AND seq > 4;` +
        ` UPDATE audit_chain_heads SET sequence = 4, hash = ${quote((events[2] as StoredEvent).hash)}` +
        ` WHERE chain_id = ${quote(chain)}`,
    );
    expect((await verify()).problems.map(({ chainId, sequence, kind }) => ({ chainId, sequence, kind }))).toEqual([
      { chainId: chain, sequence: 5, kind: "chain-truncated" },
    ]);
  });

  it("checkpoints signed by another key are refused", async () => {
    const { verify, t, dir, clock, signingKey, writer } = await setup();
    const other = new SigningKey(generateKeyPairSync("ed25519").privateKey);
    expect((await verify(other)).problems.map((p) => [p.sequence, p.kind])).toEqual([
      [1, "checkpoint-signature"],
      [2, "checkpoint-signature"],
      [3, "checkpoint-signature"],
    ]);
    // A forger who appends a checkpoint to both stores with a key of their own.
    const last = (await t.superuser("SELECT record FROM audit_checkpoints WHERE seq = 3"))[0] as { record: string };
    const previous = JSON.parse(last.record) as CheckpointRecord;
    const record: CheckpointRecord = {
      ...previous,
      seq: 4,
      at: clock.now().toISOString(),
      prev: createHash("sha256").update(last.record).digest("hex"),
      keyId: other.keyId,
    };
    const forged = signRecord(record, other);
    // In the shape of a version 1 line, which lists every head.
    const heads = JSON.parse(
      readFileSync(join(dir, "2026-06-02.jsonl"), "utf8").trimEnd().split("\n").at(-1) as string,
    ).changed;
    appendFileSync(
      join(dir, "2026-06-02.jsonl"),
      `${canonicalize({ heads, record: forged.record, sig: forged.sig })}\n`,
    );
    await t.superuser(
      `INSERT INTO audit_checkpoints (seq, type, record, signature) VALUES (4, 'checkpoint', ${quote(canonicalize(record))}, ${quote(forged.sig)})`,
    );
    expect((await verify(signingKey)).problems.map((p) => [p.chainId, p.sequence, p.kind])).toEqual([
      [CHECKPOINT_CHAIN, 4, "checkpoint-signature"],
    ]);
    await expect(checkpointsForChain({ ...writer, verifier: signingKey, chainId: "x" })).rejects.toThrow(
      /checkpoint-signature at checkpoint 4/,
    );
  });

  it("an export's checkpoints: each with the chain's head and an inclusion proof that verifies on its own", async () => {
    const { db, dir, signingKey, a, b, events } = await setup();
    const chainId = tenantChainId(a.id, "changes");
    const covering = checkpointsOf(await checkpointsForChain({ db, dir, verifier: signingKey, chainId }));
    // Checkpoint 1 first signed seq 4, checkpoint 2 seq 6; checkpoint 3 is the latest to name the chain.
    expect(covering.map((c) => [c.record.seq, c.head.seq])).toEqual([
      [1, 4],
      [2, 6],
      [3, 6],
    ]);
    for (const c of covering) {
      expect(c.head).toEqual({ chain: chainId, seq: c.head.seq, hash: (events[c.head.seq - 2] as StoredEvent).hash });
      expect(verifyInclusion(headLeafHash(c.head), c.index, c.record.leaves, c.proof, c.record.root)).toBe(true);
      // The other tenant appears only as a sibling hash, never by its id.
      expect(JSON.stringify(c)).not.toContain(b.id);
    }
    expect(await checkpointsForChain({ db, dir, verifier: signingKey, chainId: "tenant/none/changes" })).toEqual([]);
  });

  it("the schedule makes a checkpoint every minute through the job queue", async () => {
    const { db, clock, writer, verify } = await setup();
    const jobs = testJobs(db, clock);
    scheduleCheckpoints(jobs, writer);
    await jobs.start();
    try {
      clock.set("2026-06-02T00:10:00Z");
      expect((await jobs.tick()).slots).toBe(1);
      await eventually(async () => (await verify()).checkpoints === 4);
      expect((await verify()).problems).toEqual([]);
    } finally {
      await jobs.stop();
    }
    expect(CHECKPOINT_JOB).toBe("audit.checkpoint");
  });
  /** The problems of a report as [chain, sequence, kind]. */
  const kinds = (report: { problems: { chainId: string; sequence: number; kind: string }[] }) =>
    report.problems.map((p) => [p.chainId, p.sequence, p.kind]);
  const fileLines = (path: string) => readFileSync(path, "utf8").trimEnd().split("\n");
  const writeLines = (path: string, lines: string[]) => writeFileSync(path, `${lines.join("\n")}\n`);

  it("a checkpoint after a change to 1 of N chains writes 1 head; exports still prove every chain", async () => {
    const { db, dir, audit, a, append, checkpoint, verify, signingKey } = await setup();
    // More chains: the platform chains of a dozen users (sharded by actor).
    for (let i = 0; i < 12; i++) {
      await db.withPlatform((tx) =>
        audit.record(tx, {
          tenantId: null,
          stream: "security",
          actor: { kind: "user", id: uuidv7() },
          action: "auth.signed-in",
          target: { type: "user", id: null },
        }),
      );
    }
    const wider = await checkpoint();
    const chains = wider.heads.length;
    expect(chains).toBeGreaterThan(4);
    await append(a, 1);
    const made = await checkpoint();
    const last = JSON.parse(fileLines(join(dir, "2026-06-02.jsonl")).at(-1) as string);
    expect(last).toMatchObject({
      v: 2,
      base: "previous",
      removed: [],
      record: { seq: made.record.seq, leaves: chains },
    });
    expect(last.changed).toEqual([made.heads.find((h) => h.chain === tenantChainId(a.id, "changes"))]);
    expect((await verify()).problems).toEqual([]);
    // The inclusion proof of a chain that did not change is built from the heads rebuilt line by line.
    const platformChain = (wider.heads.find((h) => h.chain.startsWith("platform/security/")) as { chain: string })
      .chain;
    const proven = checkpointsOf(await checkpointsForChain({ db, dir, verifier: signingKey, chainId: platformChain }));
    expect(proven.map((c) => c.record.seq)).toEqual([wider.record.seq, made.record.seq]);
    for (const c of proven) {
      expect(verifyInclusion(headLeafHash(c.head), c.index, c.record.leaves, c.proof, c.record.root)).toBe(true);
    }
  });

  it("version 1 lines, which list every head, still verify, export, and are continued by version 2 lines", async () => {
    const { db, dir, a, append, checkpoint, verify, signingKey } = await setup();
    // Rewritten as the files were before changed-heads lines: the same records and signatures.
    const heads = new HeadSet();
    for (const name of files(dir)) {
      const path = join(dir, name);
      const v1 = fileLines(path).map((line) => {
        const { base, changed, removed, record, sig } = JSON.parse(line);
        heads.apply({ base, changed, removed });
        return canonicalize({ heads: heads.heads(), record, sig });
      });
      writeLines(path, v1);
    }
    expect(JSON.parse(fileLines(join(dir, "2026-06-01.jsonl"))[1] as string).heads).toHaveLength(2);
    expect((await verify()).problems).toEqual([]);
    const chainId = tenantChainId(a.id, "changes");
    expect(checkpointsOf(await checkpointsForChain({ db, dir, verifier: signingKey, chainId }))).toHaveLength(3);
    await append(a, 1);
    await checkpoint();
    expect(JSON.parse(fileLines(join(dir, "2026-06-02.jsonl")).at(-1) as string)).toMatchObject({ v: 2 });
    expect((await verify()).problems).toEqual([]);
  });

  it("a changed-heads line edited, emptied or given a removal is reported where it no longer builds its root", async () => {
    const { dir, verify } = await setup();
    const path = join(dir, "2026-06-01.jsonl");
    const original = fileLines(path);
    const line = JSON.parse(original[1] as string);
    const edits = [
      { ...line, changed: [{ ...line.changed[0], hash: "0".repeat(64) }] },
      { ...line, changed: [{ ...line.changed[0], seq: line.changed[0].seq - 1 }] },
      { ...line, changed: [] },
      { ...line, removed: [line.changed[0].chain] },
    ];
    for (const edited of edits) {
      writeLines(path, [original[0] as string, canonicalize(edited)]);
      expect(kinds(await verify())).toEqual([[CHECKPOINT_CHAIN, 2, "checkpoint-root"]]);
    }
    // A line that lists every head, one left out.
    const first = JSON.parse(original[0] as string);
    writeLines(path, [canonicalize({ ...first, changed: first.changed.slice(1) }), original[1] as string]);
    expect(kinds(await verify())).toEqual([[CHECKPOINT_CHAIN, 1, "checkpoint-root"]]);
  });

  it("a crash between a line's flush and its row's commit is recovered by the next checkpoint, and recorded", async () => {
    const { db, writer, checkpoint, verify } = await setup();
    const crashing: Database = {
      ...db,
      withPlatform: (fn, ctx) =>
        db.withPlatform(async (tx) => {
          await fn(tx);
          throw new Error("the process died before the commit");
        }, ctx),
    };
    await expect(createCheckpoint({ ...writer, db: crashing })).rejects.toThrow("died before the commit");
    // The line is in the file and its row is not: until then, the same as a row deleted.
    expect(kinds(await verify())).toEqual([[CHECKPOINT_CHAIN, 4, "checkpoint-row-missing"]]);
    const made = await checkpoint();
    expect(made.record.seq).toBe(5);
    expect((await verify()).problems).toEqual([]);
    const recorded = await db.withPlatform((tx) =>
      tx
        .selectFrom("platform_audit_events")
        .select(["chain_id", "actor_kind", "details"])
        .where("action", "=", CHECKPOINT_RECOVERED)
        .execute(),
    );
    expect(recorded).toEqual([
      {
        chain_id: platformChainId("security", SYSTEM_ACTOR),
        actor_kind: "system",
        details: { seq: 4, type: "checkpoint", file: expect.stringMatching(/^2026-06-02\.jsonl/) },
      },
    ]);
    // The recovered event's chain is in the next checkpoint.
    expect(made.heads.map((h) => h.chain)).toContain(platformChainId("security", SYSTEM_ACTOR));
  });

  it("nothing else is recovered: a newest line another key signed, or one that does not follow the table", async () => {
    const { t, dir, clock, writer, checkpoint, verify } = await setup();
    const path = join(dir, "2026-06-02.jsonl");
    const clean = fileLines(path);
    const lastRow = (await t.superuser("SELECT record FROM audit_checkpoints WHERE seq = 3"))[0] as { record: string };
    const other = new SigningKey(generateKeyPairSync("ed25519").privateKey);
    const next = (prev: string, key: SigningKey) => {
      const record: CheckpointRecord = {
        ...(JSON.parse(lastRow.record) as CheckpointRecord),
        seq: 4,
        at: clock.now().toISOString(),
        prev,
        keyId: key.keyId,
      };
      const signed = signRecord(record, key);
      return canonicalize({ base: "previous", changed: [], record, removed: [], sig: signed.sig, v: 2 });
    };
    const lastHash = createHash("sha256").update(lastRow.record).digest("hex");
    for (const forged of [next(lastHash, other), next("1".repeat(64), writer.signingKey)]) {
      writeLines(path, [...clean, forged]);
      await expect(checkpoint()).rejects.toThrow(CheckpointError);
      expect(kinds(await verify())).toContainEqual([CHECKPOINT_CHAIN, 4, "checkpoint-row-missing"]);
    }
    // The genuine line of a crashed append, after the table's last row: recovered.
    writeLines(path, [...clean, next(lastHash, writer.signingKey)]);
    expect((await checkpoint()).record.seq).toBe(5);
    expect((await verify()).problems).toEqual([]);
  });

  it("a key rotation hands signing on: each record verifies under the key current at its place, and no other", async () => {
    const { db, t, dir, clock, a, append, writer, signingKey, verify } = await setup();
    const successorPair = generateKeyPairSync("ed25519");
    const successor = new SigningKey(successorPair.privateKey);
    const rotation = await appendKeyRotation(writer, successor);
    expect(rotation.record).toMatchObject({
      type: "key-rotation",
      seq: 4,
      keyId: signingKey.keyId,
      newKeyId: successor.keyId,
    });
    const current = new SigningKey(successorPair.privateKey, [
      { ...signingKey.toJSON(), retiredAt: rotation.record.at, rotation: 4, successor: successor.keyId },
    ]);
    // The retired key may no longer append; the new one does.
    await expect(createCheckpoint(writer)).rejects.toThrow(/signed by key .* after key rotation 4/);
    await append(a, 1);
    clock.advance(60_000);
    expect((await createCheckpoint({ ...writer, signingKey: current })).record).toMatchObject({
      seq: 5,
      keyId: current.keyId,
    });
    expect((await verify(current)).problems).toEqual([]);
    // Without the history, the chain starts at the wrong key or ends at another one.
    expect(kinds(await verify(signingKey))).toEqual([[CHECKPOINT_CHAIN, 5, "checkpoint-signature"]]);
    expect(kinds(await verify(successor))).toEqual(
      [1, 2, 3, 4].map((seq) => [CHECKPOINT_CHAIN, seq, "checkpoint-signature"]),
    );
    // The export carries the rotation between the checkpoints, in the order of the chain.
    const covering = await checkpointsForChain({ db, dir, verifier: current, chainId: tenantChainId(a.id, "changes") });
    expect(
      covering.map((line) =>
        "checkpoint" in line ? line.checkpoint.record.seq : `rotation ${line.keyRotation.record.seq}`,
      ),
    ).toEqual([1, 2, "rotation 4", 5]);

    // Someone who kept the retired key appends a checkpoint with it: refused, though the key is the platform's.
    const last = (await t.superuser("SELECT record FROM audit_checkpoints WHERE seq = 5"))[0] as { record: string };
    const record: CheckpointRecord = {
      ...(JSON.parse(last.record) as CheckpointRecord),
      seq: 6,
      prev: createHash("sha256").update(last.record).digest("hex"),
      keyId: signingKey.keyId,
    };
    const forged = signRecord(record, signingKey);
    appendFileSync(
      join(dir, "2026-06-02.jsonl"),
      `${canonicalize({ base: "previous", changed: [], record, removed: [], sig: forged.sig, v: 2 })}\n`,
    );
    await t.superuser(
      `INSERT INTO audit_checkpoints (seq, type, record, signature) VALUES (6, 'checkpoint', ${quote(canonicalize(record))}, ${quote(forged.sig)})`,
    );
    expect(kinds(await verify(current))).toEqual([[CHECKPOINT_CHAIN, 6, "checkpoint-signature"]]);
  });

  it("a rotation the new key did not sign introduces nothing", async () => {
    const { dir, t, clock, signingKey, verify } = await setup();
    const successor = new SigningKey(generateKeyPairSync("ed25519").privateKey);
    const impostor = new SigningKey(generateKeyPairSync("ed25519").privateKey);
    const last = (await t.superuser("SELECT record FROM audit_checkpoints WHERE seq = 3"))[0] as { record: string };
    const place = {
      seq: 4,
      at: clock.now().toISOString(),
      prev: createHash("sha256").update(last.record).digest("hex"),
    };
    // Names the successor, with the impostor's proof of possession, signed by the key current there.
    const record = {
      ...signKeyRotation(place, signingKey, successor).record,
      possession: signKeyRotation(place, signingKey, impostor).record.possession,
    };
    const signed = signRecord(record, signingKey);
    appendFileSync(join(dir, "2026-06-02.jsonl"), `${canonicalize({ record, sig: signed.sig, v: 2 })}\n`);
    await t.superuser(
      `INSERT INTO audit_checkpoints (seq, type, record, signature) VALUES (4, 'key-rotation', ${quote(canonicalize(record))}, ${quote(signed.sig)})`,
    );
    expect(kinds(await verify(signingKey))).toEqual([[CHECKPOINT_CHAIN, 4, "checkpoint-signature"]]);
  });
});
