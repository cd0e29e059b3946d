import { availableParallelism } from "node:os";
import { defineConfig } from "vitest/config";
import { BaseSequencer, type TestSpecification } from "vitest/node";

/**
 * The files that take the longest (minutes, against seconds for most): each runs whole in one worker, so a
 * run lasts at least as long as the last of them to start. Vitest starts the slowest first when it has timings
 * of an earlier run, but a fresh clone (CI) has none, and it then starts the largest files first: these small
 * ones came last and left the other cores idle for minutes. Longest first.
 */
const LONGEST_FILES = [
  "test/permission-matrix.test.ts",
  "test/cli.test.ts",
  "src/platform/audit/cli.test.ts",
  "test/account-reset-factors.test.ts",
  "test/server.test.ts",
  "src/platform/jobs/crash.test.ts",
  "test/operator-setup.test.ts",
];

class LongestFilesFirst extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const sorted = await super.sort(files);
    const rank = (file: TestSpecification) => {
      const index = LONGEST_FILES.findIndex((path) => file.moduleId.endsWith(`/${path}`));
      return index === -1 ? LONGEST_FILES.length : index;
    };
    // Array.prototype.sort is stable: the rest keep the order Vitest gave them.
    return sorted.sort((a, b) => rank(a) - rank(b));
  }
}

export default defineConfig({
  test: {
    include: ["src/**/*.test.ts", "test/**/*.test.ts"],
    globalSetup: ["test/support/global-setup.ts"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: "forks",
    // Vitest's default leaves a core free (one worker on a two-core machine), but a test file spends much of
    // its time waiting for PostgreSQL, a `charter` process it started or Argon2's threads: one per core.
    maxWorkers: availableParallelism(),
    sequence: { sequencer: LongestFilesFirst },
  },
});
