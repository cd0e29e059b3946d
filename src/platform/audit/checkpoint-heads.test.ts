import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { SigningKey } from "../crypto/signing-key.ts";
import { canonicalize } from "./canonical.ts";
import { HeadSet } from "./checkpoint-heads.ts";
import { type CheckpointHead, type CheckpointRecord, GENESIS, headLeafHash, signRecord } from "./checkpoint-record.ts";
import { appendCheckpointLine, isUnreadable, readCheckpointLines } from "./checkpoint-store.ts";
import { merkleRoot } from "./merkle.ts";

const hash = (n: number) => n.toString(16).padStart(64, "0");
const head = (chain: string, seq: number): CheckpointHead => ({ chain, seq, hash: hash(seq) });
const chains = (n: number) =>
  Array.from({ length: n }, (_, i) =>
    head(`tenant/${String(i).padStart(8, "0")}-0000-7000-8000-000000000000/changes`, 1),
  );

describe("the heads of checkpoint lines", () => {
  it("rebuilds the full set from a line listing every head and lines listing changes", () => {
    const set = new HeadSet();
    expect(set.apply({ base: "empty", changed: [head("a", 1), head("b", 1), head("c", 1)], removed: [] })).toBe(
      undefined,
    );
    const next = [head("a", 2), head("b", 1), head("d", 1)];
    const change = set.changeTo(next);
    expect(change).toEqual({ base: "previous", changed: [head("a", 2), head("d", 1)], removed: ["c"] });
    expect(set.apply(change)).toBe(undefined);
    expect(set.heads()).toEqual(next);
    expect(merkleRoot(set.leafHashes())).toBe(merkleRoot(next.map(headLeafHash)));
    expect([set.indexOf("a"), set.indexOf("d"), set.indexOf("c")]).toEqual([0, 2, -1]);
    expect(set.changeTo(next)).toEqual({ base: "previous", changed: [], removed: [] });
  });

  it("refuses a change that is not one", () => {
    const fresh = () => {
      const set = new HeadSet();
      set.apply({ base: "empty", changed: [head("a", 1), head("b", 1)], removed: [] });
      return set;
    };
    expect(fresh().apply({ base: "previous", changed: [head("b", 2), head("a", 2)], removed: [] })).toMatch(/sorted/);
    expect(fresh().apply({ base: "previous", changed: [head("a", 2), head("a", 3)], removed: [] })).toMatch(/sorted/);
    expect(fresh().apply({ base: "previous", changed: [head("a", 2)], removed: ["a"] })).toMatch(/both/);
    expect(fresh().apply({ base: "previous", changed: [], removed: ["z"] })).toMatch(/not in the set/);
    expect(fresh().apply({ base: "empty", changed: [], removed: ["a"] })).toMatch(/removes nothing/);
  });

  describe("in the files", () => {
    let dir: string;
    afterEach(() => rmSync(dir, { recursive: true, force: true }));

    it("a line after 10 of 1,000 chains changed carries 10 heads, and is read back one line at a time", async () => {
      dir = mkdtempSync(join(tmpdir(), "charter-heads-"));
      const key = new SigningKey(generateKeyPairSync("ed25519").privateKey);
      const before = chains(1000);
      const after = before.map((h, i) => (i % 100 === 0 ? head(h.chain, 2) : h));
      const sign = (seq: number, heads: CheckpointHead[], prev: string) => {
        const record: CheckpointRecord = {
          v: 1,
          type: "checkpoint",
          seq,
          at: `2026-06-01T00:0${seq}:00.000Z`,
          root: merkleRoot(heads.map(headLeafHash)),
          leaves: heads.length,
          prev,
          keyId: key.keyId,
        };
        return signRecord(record, key);
      };
      const first = sign(1, before, GENESIS);
      await appendCheckpointLine(dir, first, { base: "empty", changed: before, removed: [] });
      const set = new HeadSet();
      set.apply({ base: "empty", changed: before, removed: [] });
      const second = sign(2, after, first.hash);
      const change = set.changeTo(after);
      await appendCheckpointLine(dir, second, change);

      const [full, changed] = readFileSync(join(dir, "2026-06-01.jsonl"), "utf8").trimEnd().split("\n") as [
        string,
        string,
      ];
      expect(JSON.parse(changed).changed).toHaveLength(10);
      // A version 1 line of the same checkpoint listed every head.
      const v1 = canonicalize({ heads: after, record: second.record, sig: second.sig });
      expect(Buffer.byteLength(changed)).toBeLessThan(Buffer.byteLength(v1) / 50);
      expect(JSON.parse(full).changed).toHaveLength(1000);

      const rebuilt = new HeadSet();
      const read: string[] = [];
      for await (const line of readCheckpointLines(dir)) {
        if (isUnreadable(line) || !line.change) throw new Error(`${line.where} did not read back`);
        expect(rebuilt.apply(line.change)).toBe(undefined);
        expect(merkleRoot(rebuilt.leafHashes())).toBe(line.record.type === "checkpoint" ? line.record.root : undefined);
        read.push(line.where);
      }
      expect(read).toEqual(["2026-06-01.jsonl:1", "2026-06-01.jsonl:2"]);
    });
  });
});
