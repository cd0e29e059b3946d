import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type CharterProcess,
  cliEnv,
  freePort,
  runCharter,
  STACK_FRAME,
  spawnCharter,
  waitUntilServing,
} from "./support/cli.ts";

const GENERATED_KEY_WARNING = "generated a new master key";
const mode = (path: string) => statSync(path).mode & 0o777;

/** `charter start` as `npm start` runs it, on the embedded database, booted twice on one data directory. */
describe("charter start on the embedded database", () => {
  let root: string;
  let dataDir: string;
  let env: NodeJS.ProcessEnv;
  let base: string;
  const spawned: CharterProcess[] = [];

  function start(): CharterProcess {
    const charter = spawnCharter(["start"], env);
    spawned.push(charter);
    return charter;
  }

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), "charter-server-"));
    dataDir = join(root, "data");
    const port = await freePort();
    env = cliEnv({ CHARTER_DATA_DIR: dataDir, PORT: String(port), LOG_LEVEL: "warn" });
    base = `http://127.0.0.1:${port}`;
  });

  afterAll(async () => {
    for (const charter of spawned) charter.kill("SIGKILL");
    await Promise.all(spawned.map((charter) => charter.exited.catch(() => undefined)));
    rmSync(root, { recursive: true, force: true });
  });

  let keyBefore: { content: string; mtimeMs: number };

  it("boots on a fresh data directory, serves, answers doctor through its control socket, and drains on SIGTERM", async () => {
    const server = start();
    const bootMs = await waitUntilServing(`${base}/health`, server, 60_000);
    console.info(`charter start: first boot on a fresh data directory served /health after ${Math.round(bootMs)} ms`);

    expect((await fetch(`${base}/ready`)).status).toBe(200);
    const openapi = await fetch(`${base}/openapi.json`);
    expect(openapi.status).toBe(200);
    expect((await openapi.json()) as object).toMatchObject({ openapi: "3.1.0" });

    expect(server.stdout()).toContain(`charter: serving on ${base}`);
    expect(server.stderr()).toContain(GENERATED_KEY_WARNING);
    const keyPath = join(dataDir, "keys", "master.key");
    expect(mode(keyPath)).toBe(0o600);
    keyBefore = { content: readFileSync(keyPath, "utf8"), mtimeMs: statSync(keyPath).mtimeMs };

    // The server holds the database, so the CLI cannot open it and must go through the socket.
    const lockPath = join(dataDir, "db.lock");
    expect(JSON.parse(readFileSync(lockPath, "utf8"))).toMatchObject({ pid: server.child.pid });
    const socketPath = join(dataDir, "run", "charter.sock");
    expect(statSync(socketPath).isSocket()).toBe(true);
    expect(mode(socketPath)).toBe(0o600);
    expect(mode(join(dataDir, "run"))).toBe(0o700);

    const doctor = await runCharter(["doctor"], env);
    expect(doctor).toMatchObject({ code: 0, stderr: "" });
    const lines = doctor.stdout.trimEnd().split("\n");
    expect(lines.length).toBeGreaterThanOrEqual(5);
    for (const line of lines) expect(line).toMatch(/^PASS {2}\S+ \[/);
    expect(doctor.stdout).toContain("keys.master-key");
    // Still the server's lock: the CLI never took the database.
    expect(JSON.parse(readFileSync(lockPath, "utf8"))).toMatchObject({ pid: server.child.pid });

    server.kill("SIGTERM");
    const exit = await server.exited;
    expect(exit).toMatchObject({ code: 0, signal: null });
    expect(exit.stdout).toContain("charter: SIGTERM: draining requests, then closing the database");
    expect(existsSync(lockPath)).toBe(false);
    expect(existsSync(socketPath)).toBe(false);
    await expect(fetch(`${base}/health`)).rejects.toThrow();
  }, 120_000);

  it("boots again on the same data directory with the same master key, and refuses a second server on it", async () => {
    expect(keyBefore).toBeDefined();
    const server = start();
    await waitUntilServing(`${base}/ready`, server, 60_000);
    expect(server.stderr()).not.toContain(GENERATED_KEY_WARNING);
    const keyPath = join(dataDir, "keys", "master.key");
    expect({ content: readFileSync(keyPath, "utf8"), mtimeMs: statSync(keyPath).mtimeMs }).toEqual(keyBefore);

    const second = await runCharter(["start"], env, 30_000);
    expect(second.code).not.toBe(0);
    expect(second.code).not.toBeNull();
    expect(second.stderr.trimEnd().split("\n")).toEqual([
      `charter: the embedded database is in use by process ${server.child.pid} (lock file ${join(dataDir, "db.lock")})`,
    ]);
    expect(second.stderr).not.toMatch(STACK_FRAME);
    // The refused start left the running server alone: its socket and its lock are intact.
    expect((await fetch(`${base}/ready`)).status).toBe(200);
    expect((await runCharter(["doctor"], env)).code).toBe(0);
    // The schema persisted across the restart: migrate, run inside the server, finds nothing to do.
    const migrate = await runCharter(["migrate"], env);
    expect(migrate).toMatchObject({ code: 0, stdout: "the database is up to date\n", stderr: "" });
    expect(readFileSync(keyPath, "utf8")).toBe(keyBefore.content);

    server.kill("SIGTERM");
    expect(await server.exited).toMatchObject({ code: 0, signal: null });
    expect(existsSync(join(dataDir, "db.lock"))).toBe(false);
  }, 120_000);
});
