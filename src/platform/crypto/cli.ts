import { resolve } from "node:path";
import type { Command } from "commander";
import type { CommandHandler, CommandResult, RunMaintenance } from "../cli/control-socket.ts";
import type { Database } from "../db/index.ts";
import { MasterKeyMismatchError } from "./key-ring.ts";
import type { MasterKey } from "./master-key.ts";
import { type MasterKeyRotationDeps, MasterKeyRotationError, rotateMasterKey } from "./master-rotation.ts";

/** `charter keys …`: the master key's rotation. */

const SERVER_RUNS =
  "charter: the master key cannot be rotated while the server runs (it holds the keys the old master key " +
  "opened): stop it, run charter keys rotate-master, then start it with the new key";

/** `charter keys rotate-master`, with no server running. */
export async function runRotateMasterKey(
  deps: MasterKeyRotationDeps,
  from: MasterKey,
  next: { key: MasterKey; created: boolean; path: string },
): Promise<CommandResult> {
  const made = next.created ? `created ${next.path} (mode 0600) with a new master key ${next.key.fingerprint}; ` : "";
  try {
    const report = await rotateMasterKey(deps, from, next.key);
    return {
      exitCode: 0,
      output:
        `${made}${report.resumed ? "completed an interrupted rotation" : "rotated the master key"} from ` +
        `${from.fingerprint} to ${next.key.fingerprint}: ${report.keys} keys wrapped again, ${report.indexes} ` +
        `blind index values computed again, ${report.tenants} tenants moved. Configure the new key ` +
        `(CHARTER_MASTER_KEY_FILE=${next.path}, or its content in CHARTER_MASTER_KEY) before starting Charter, and ` +
        "keep the old key only as long as a backup taken before this rotation may need restoring",
    };
  } catch (error) {
    if (error instanceof MasterKeyRotationError || error instanceof MasterKeyMismatchError) {
      return { exitCode: 1, output: `charter: ${made}${error.message}` };
    }
    throw error;
  }
}

/** The handler a running server answers with: a refusal (see SERVER_RUNS). */
export function keysSocketHandlers(): Record<string, CommandHandler> {
  return { "keys-rotate-master": async () => ({ exitCode: 1, output: SERVER_RUNS }) };
}

export interface KeysCliAccess {
  /** The configured master key (the one to rotate from). */
  masterKey(): MasterKey;
  /** The key to rotate to, from `--new-key-file` (created when the file does not exist). */
  newKey(path: string): { key: MasterKey; created: boolean };
  /** What the rotation needs beside the keys, on `db`; `from` is the key masterKey() loaded. */
  deps(db: Database, from: MasterKey): MasterKeyRotationDeps;
  /** Runs a command inside the server of this data directory; undefined when no server answers. */
  callServer(name: string): Promise<CommandResult | undefined>;
}

/** Registers `charter keys` and its subcommands. */
export function keysCommands(program: Command, run: RunMaintenance, access: () => KeysCliAccess): void {
  const keys = program.command("keys").description("the key hierarchy");
  keys
    .command("rotate-master")
    .description(
      "move every key the master key wraps (the platform's and each tenant's) to a new master key, and compute " +
        "the blind indexes derived from it again; run it again to finish a rotation a crash interrupted. Stop the " +
        "server first, and start it with the new key afterwards",
    )
    .requiredOption(
      "--new-key-file <path>",
      "file holding the new master key (32 bytes raw, base64 or hex, mode 0600, outside the database directory); " +
        "created with a new random key when it does not exist",
    )
    .action(async (options: { newKeyFile: string }) => {
      const cli = access();
      const served = await cli.callServer("keys-rotate-master");
      if (served) {
        process.stderr.write(`${served.output}\n`);
        process.exitCode = served.exitCode;
        return;
      }
      const path = resolve(options.newKeyFile);
      const from = cli.masterKey();
      const next = { ...cli.newKey(path), path };
      await run("keys-rotate-master", {}, (db) => runRotateMasterKey(cli.deps(db, from), from, next));
    });
}
