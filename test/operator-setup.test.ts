import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { eventually } from "../src/platform/jobs/testing.ts";
import { type CharterProcess, cliEnv, freePort, runCharter, spawnCharter, waitUntilServing } from "./support/cli.ts";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "./support/databases.ts";

/**
 * Issue 5: the first operator is created through a one-time setup link shown on a terminal only, never
 * written to a log. A server whose output is not a terminal (as here: a pipe, which may feed a log) prints
 * no link, only how to ask for one: `charter operator setup-link`, which prints it on the asking terminal.
 */
describe.each(DATABASE_KINDS)("operator setup link on %s", (kind) => {
  let root: string;
  let env: NodeJS.ProcessEnv;
  let origin: string;
  let postgres: TestDatabase | undefined;
  let server: CharterProcess | undefined;

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), `charter-operator-${kind}-`));
    if (kind === "postgres") postgres = await openTestDatabase("postgres");
    const port = String(await freePort());
    origin = `http://localhost:${port}`;
    env = cliEnv({
      CHARTER_DATA_DIR: join(root, "data"),
      PORT: port,
      LOG_LEVEL: "trace",
      ...(postgres?.url ? { DATABASE_URL: postgres.url } : {}),
    });
  });

  afterAll(async () => {
    server?.kill("SIGKILL");
    await server?.exited.catch(() => undefined);
    await postgres?.close();
    rmSync(root, { recursive: true, force: true });
  });

  it("is never printed to a piped output, is given on request, works once, and never reaches the log", async () => {
    server = spawnCharter(["start"], env);
    await waitUntilServing(`http://127.0.0.1:${env.PORT}/health`, server, 60_000);
    const running = server;
    // Written after the server listens; a pipe delivers it a moment later.
    await eventually(async () => running.stderr().includes("charter operator setup-link") || undefined, 10_000);
    expect(server.stdout()).not.toContain("#token=");

    const asked = await runCharter(["operator", "setup-link"], env);
    expect(asked.code).toBe(0);
    const link = new RegExp(`${origin}/setup#token=([A-Za-z0-9_-]{43})`).exec(asked.stdout);
    expect(link).not.toBeNull();
    const token = link?.[1] ?? "";

    const setup = (password: string) =>
      fetch(`http://127.0.0.1:${env.PORT}/api/v1/operator/setup`, {
        method: "POST",
        headers: { "content-type": "application/json", "sec-fetch-site": "same-origin" },
        body: JSON.stringify({ token, email: "ops@example.com", displayName: "Ops", password }),
      });
    const created = await setup("a long operator passphrase that nobody guesses");
    expect(created.status).toBe(201);
    expect((await setup("a long operator passphrase that nobody guesses")).status).toBe(404);

    const again = await runCharter(["operator", "setup-link"], env);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain("an operator exists already");

    server.kill("SIGTERM");
    await server.exited;
    expect(`${server.stdout()}${server.stderr()}`).not.toContain(token);
  }, 180_000);
});
