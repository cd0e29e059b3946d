import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cliEnv, REPO_ROOT } from "../../../test/support/cli.ts";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";

const ITEMS = 50;
const BATCH = 10;
/** Batches 0..2 commit; batch 3 hangs inside its transaction and is killed. */
const KILLED_IN = 3;

interface Worker {
  child: ChildProcess;
  output(): string;
  /** Resolves with the first stdout line matching `pattern`; rejects if the process exits first. */
  line(pattern: RegExp, timeoutMs: number): Promise<RegExpExecArray>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function worker(env: Record<string, string>): Worker {
  const child = spawn(process.execPath, ["test/fixtures/jobs-crash-worker.ts"], {
    cwd: REPO_ROOT,
    env: cliEnv({ ITEMS: String(ITEMS), BATCH: String(BATCH), ...env }),
    stdio: "pipe",
  });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
    stdout += chunk;
  });
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => {
    stderr += chunk;
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((done) =>
    child.once("close", (code, signal) => done({ code, signal })),
  );
  let gone = false;
  void exited.then(() => {
    gone = true;
  });
  return {
    child,
    exited,
    output: () => `${stdout}\n${stderr}`,
    async line(pattern, timeoutMs) {
      const started = performance.now();
      for (;;) {
        const match = pattern.exec(stdout);
        if (match) return match;
        if (gone) throw new Error(`the worker exited before printing ${pattern}:\n${stdout}\n${stderr}`);
        if (performance.now() - started > timeoutMs) throw new Error(`no ${pattern} in time:\n${stdout}\n${stderr}`);
        await new Promise((done) => setTimeout(done, 50));
      }
    },
  };
}

describe.each(DATABASE_KINDS)("a long job killed mid-run on %s", (kind) => {
  let t: TestDatabase | undefined;
  let dataDir: string | undefined;
  let env: Record<string, string>;
  beforeAll(async () => {
    if (kind === "postgres") {
      t = await openTestDatabase(kind);
      env = { DATABASE_URL: t.url as string };
    } else {
      // A data directory on disk, so the restarted process opens the same files.
      dataDir = mkdtempSync(join(tmpdir(), "charter-jobs-crash-"));
      env = { CHARTER_DATA_DIR: dataDir };
    }
  });
  afterAll(async () => {
    await t?.close();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  it("resumes after SIGKILL at the batch after the last committed one, processing every item exactly once", async () => {
    const first = worker({ ...env, SEND: "1", HANG_AT: String(KILLED_IN) });
    try {
      await first.line(new RegExp(`started batch ${KILLED_IN} attempt 0`), 60_000);
    } finally {
      first.child.kill("SIGKILL");
    }
    expect((await first.exited).signal).toBe("SIGKILL");
    expect(first.output()).not.toMatch(/started batch [4-9]/);

    const second = worker(env);
    try {
      const [, resumedAt, attempt] = await second.line(/started batch (\d+) attempt (\d+)/, 60_000);
      expect(Number(resumedAt)).toBe(KILLED_IN);
      expect(Number(attempt)).toBe(1);
      const [, json] = await second.line(/result (.*)/, 90_000);
      const counts = JSON.parse(json as string) as { item: number; count: number; attempts: number[] }[];
      expect(counts.map((c) => c.item)).toEqual(Array.from({ length: ITEMS }, (_, i) => i));
      expect(counts.every((c) => c.count === 1)).toBe(true);
      // Batches before the kill were committed by the first attempt, the rest by the retry.
      expect(counts.map((c) => c.attempts[0])).toEqual(
        Array.from({ length: ITEMS }, (_, i) => (i < KILLED_IN * BATCH ? 0 : 1)),
      );
      expect((await second.exited).code).toBe(0);
    } finally {
      second.child.kill("SIGKILL");
    }
  }, 180_000);
});
