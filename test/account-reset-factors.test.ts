import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type CharterProcess, cliEnv, freePort, runCharter, spawnCharter, waitUntilServing } from "./support/cli.ts";

/**
 * Issue 5: resetting a user's lost factors is a command-line action, delayed and notified to the user.
 * `charter account reset-factors <email>` runs inside the server (through its control socket) while it holds
 * the embedded database, and on the database directly when no server runs.
 */
describe("charter account reset-factors", () => {
  let root: string;
  let env: NodeJS.ProcessEnv;
  let server: CharterProcess | undefined;

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), "charter-reset-factors-"));
    env = cliEnv({ CHARTER_DATA_DIR: join(root, "data"), PORT: String(await freePort()) });
  });

  afterAll(async () => {
    server?.kill("SIGKILL");
    await server?.exited.catch(() => undefined);
    rmSync(root, { recursive: true, force: true });
  });

  const api = (path: string, body: object) =>
    fetch(`http://127.0.0.1:${env.PORT}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json", "sec-fetch-site": "same-origin" },
      body: JSON.stringify(body),
    });

  /** The newest message of `template` to `address`, as `charter mail outbox` prints it. */
  async function outboxMessage(address: string, template: string): Promise<string> {
    const outbox = await runCharter(["mail", "outbox"], env);
    expect(outbox.code).toBe(0);
    const block = outbox.stdout
      .split(/\n\n(?=\d{4}-\d\d-\d\dT)/)
      .find((b) => b.includes(`  ${template}  `) && b.includes(`To: ${address}`));
    if (!block) throw new Error(`no ${template} message to the address in the outbox`);
    return block;
  }

  /** A verified account, made through the API and the verification link from the outbox. */
  async function verifiedAccount(address: string): Promise<void> {
    const signUp = await api("/api/v1/accounts", {
      email: address,
      displayName: "Lost Keys",
      password: "violet umbrella galloping 917 quietly",
    });
    expect(signUp.status).toBe(202);
    const token = /#token=([A-Za-z0-9_-]{43})/.exec(await outboxMessage(address, "verify-email"))?.[1];
    expect(token).toBeDefined();
    expect((await api("/api/v1/accounts/verify-email", { token })).status).toBe(204);
  }

  const DUE = /takes effect at (\d{4}-\d\d-\d\d \d\d:\d\d) UTC; the user has been told by email and can cancel it/;

  /** The due time printed, checked to be 72 hours (to the minute) after the command ran. */
  function expectDueIn72Hours(stdout: string, ranAt: number): void {
    const printed = DUE.exec(stdout)?.[1];
    expect(printed).toBeDefined();
    const due = Date.parse(`${printed?.replace(" ", "T")}:00Z`);
    expect(Math.abs(due - (ranAt + 72 * 3_600_000))).toBeLessThan(2 * 60_000);
  }

  it("prints when the reset takes effect (exit 0), mails the user, and refuses an unknown address (exit 1)", async () => {
    server = spawnCharter(["start"], env);
    await waitUntilServing(`http://127.0.0.1:${env.PORT}/health`, server, 60_000);
    await verifiedAccount("served@example.com");
    await verifiedAccount("direct@example.com");

    // Through the running server's control socket.
    const ranAt = Date.now();
    const served = await runCharter(["account", "reset-factors", "served@example.com"], env);
    expect(served.code).toBe(0);
    expectDueIn72Hours(served.stdout, ranAt);
    expect(await outboxMessage("served@example.com", "factor-reset-requested")).toContain("cancel it");

    const unknown = await runCharter(["account", "reset-factors", "nobody@example.com"], env);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain("no verified account has this address");

    const again = await runCharter(["account", "reset-factors", "served@example.com"], env);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain("already pending");

    server.kill("SIGTERM");
    await server.exited;
    server = undefined;

    // On the database directly, with no server running.
    const directAt = Date.now();
    const direct = await runCharter(["account", "reset-factors", "direct@example.com"], env);
    expect(direct.code).toBe(0);
    expectDueIn72Hours(direct.stdout, directAt);
    expect(await outboxMessage("direct@example.com", "factor-reset-requested")).toContain("cancel it");
    const unknownDirect = await runCharter(["account", "reset-factors", "nobody@example.com"], env);
    expect(unknownDirect.code).toBe(1);
    expect(unknownDirect.stderr).toContain("no verified account has this address");
  }, 180_000);
});
