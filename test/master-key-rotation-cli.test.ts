import { mkdirSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadConfig } from "../src/config.ts";
import { openConfiguredDatabase } from "../src/platform/db/index.ts";
import { uuidv7 } from "../src/platform/ids.ts";
import {
  type CharterProcess,
  cliEnv,
  freePort,
  runCharter,
  STACK_FRAME,
  spawnCharter,
  waitUntilServing,
} from "./support/cli.ts";

/**
 * `charter keys rotate-master` on the embedded database (E4), end to end: refused while the server runs, then
 * run with the server stopped; afterwards the old key no longer starts Charter and the new one does. The
 * rotation itself (every key, every index, a rotation cut short) is tested on both databases in
 * master-key-rotation.test.ts.
 */
describe("charter keys rotate-master", () => {
  let root: string;
  let env: NodeJS.ProcessEnv;
  let server: CharterProcess | undefined;
  const newKeyFile = () => join(root, "secrets", "master-2.key");

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), "charter-rotate-"));
    env = cliEnv({ CHARTER_DATA_DIR: join(root, "data"), PORT: String(await freePort()), LOG_LEVEL: "warn" });
    // A data directory with its generated master key, its database and its platform key.
    server = spawnCharter(["start"], env);
    await waitUntilServing(`http://127.0.0.1:${env.PORT}/health`, server, 60_000);
  }, 120_000);

  afterAll(async () => {
    server?.kill();
    await server?.exited;
    rmSync(root, { recursive: true, force: true });
  });

  it("is refused while the server runs, and creates nothing", async () => {
    const refused = await runCharter(["keys", "rotate-master", "--new-key-file", newKeyFile()], env);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain("cannot be rotated while the server runs");
    expect(() => statSync(newKeyFile())).toThrow();
    server?.kill("SIGTERM");
    await server?.exited;
  }, 120_000);

  it("refuses a new key file inside the database directory, in one line", async () => {
    const inside = await runCharter(["keys", "rotate-master", "--new-key-file", join(root, "data", "db", "k")], env);
    expect(inside.code).toBe(2);
    expect(inside.stderr.trimEnd().split("\n")).toHaveLength(1);
    expect(inside.stderr).toContain("is inside the database directory");
    expect(inside.stderr).not.toMatch(STACK_FRAME);
  });

  it("rotates with the server stopped; then only the new key starts Charter", async () => {
    mkdirSync(join(root, "secrets"), { mode: 0o700 });
    const rotated = await runCharter(["keys", "rotate-master", "--new-key-file", newKeyFile()], env);
    expect(rotated.stderr).toBe("");
    expect(rotated.code).toBe(0);
    expect(rotated.stdout).toMatch(/created .*master-2\.key \(mode 0600\) with a new master key [0-9a-f]{16}/);
    expect(rotated.stdout).toContain("rotated the master key from");
    expect(statSync(newKeyFile()).mode & 0o777).toBe(0o600);

    const old = await runCharter(["start"], env);
    expect(old.code).toBe(2);
    expect(old.stderr.trimEnd().split("\n")).toHaveLength(1);
    expect(old.stderr).toMatch(/was rotated to ([0-9a-f]{16}) on .*: configure master key \1/);

    const again = await runCharter(["keys", "rotate-master", "--new-key-file", newKeyFile()], env);
    expect(again.code).toBe(1);

    server = spawnCharter(["start"], { ...env, CHARTER_MASTER_KEY_FILE: newKeyFile() });
    await waitUntilServing(`http://127.0.0.1:${env.PORT}/health`, server, 60_000);
  }, 180_000);

  it("an unfinished rotation stops start-up in one line, naming both keys", async () => {
    server?.kill("SIGTERM");
    await server?.exited;
    server = undefined;
    const withNewKey = { ...env, CHARTER_MASTER_KEY_FILE: newKeyFile() };
    const db = await openConfiguredDatabase(loadConfig(withNewKey));
    try {
      // As a rotation to a third key leaves it when cut short.
      await db.withPlatform((tx) =>
        tx
          .insertInto("master_key_rotations")
          .values({
            id: uuidv7(),
            from_fingerprint: "0123456789abcdef",
            to_fingerprint: "fedcba9876543210",
            started_at: new Date(),
          })
          .execute(),
      );
    } finally {
      await db.close();
    }
    const start = await runCharter(["start"], withNewKey);
    expect(start.code).toBe(2);
    expect(start.stderr.trimEnd().split("\n")).toHaveLength(1);
    expect(start.stderr).toContain("a master key rotation from 0123456789abcdef to fedcba9876543210 is unfinished");
    expect(start.stdout).not.toContain("serving on");
  }, 120_000);
});
