import { createHash, generateKeyPairSync } from "node:crypto";
import { appendFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";
import { manualClock } from "../clock.ts";
import { SigningKey } from "../crypto/signing-key.ts";
import { createTestKeyRing } from "../crypto/testing.ts";
import { uuidv7 } from "../ids.ts";
import { eventually, testJobs } from "../jobs/testing.ts";
import { createTenant, type Tenant } from "../tenancy/tenants.ts";
import { type Audit, createAudit } from "./audit.ts";
import { canonicalize } from "./canonical.ts";
import { type CheckpointRecord, headLeafHash, signCheckpoint } from "./checkpoint-record.ts";
import {
  CHECKPOINT_CHAIN,
  CHECKPOINT_JOB,
  CheckpointError,
  checkpointCheck,
  checkpointCommand,
  checkpointsForChain,
  createCheckpoint,
  scheduleCheckpoints,
  verifyCheckpoints,
} from "./checkpoints.ts";
import { eventHash, hashedFields, type StoredEvent, tenantChainId } from "./event.ts";
import { verifyInclusion } from "./merkle.ts";

const quote = (text: string) => `'${text.replaceAll("'", "''")}'`;

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
    const verify = (verifier: { keyId: string; publicKeyPem: string } = signingKey) =>
      verifyCheckpoints({ db, dir: dir as string, verifier });
    return { db, t, dir, clock, signingKey, writer, a, b, events, append, checkpoint, verify };
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
    const last = JSON.parse(lines.at(-1) as string);
    expect(last.heads.map((h: { chain: string }) => h.chain)).toEqual(chains);
    expect(canonicalize(last)).toBe(lines.at(-1));
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
    const forged = signCheckpoint(record, other);
    const heads = JSON.parse(
      readFileSync(join(dir, "2026-06-02.jsonl"), "utf8").trimEnd().split("\n").at(-1) as string,
    ).heads;
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
    const covering = await checkpointsForChain({ db, dir, verifier: signingKey, chainId });
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
});
