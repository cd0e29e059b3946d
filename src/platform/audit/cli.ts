import { closeSync, openSync, writeSync } from "node:fs";
import { resolve } from "node:path";
import type { Command } from "commander";
import type { CommandHandler, CommandResult } from "../cli/control-socket.ts";
import type { Clock } from "../clock.ts";
import type { SigningKey } from "../crypto/signing-key.ts";
import type { Database } from "../db/index.ts";
import { lastCheckpointRow, readCheckpointFiles } from "./checkpoint-store.ts";
import { CHECKPOINT_CHAIN, checkpointCheck, checkpointCommand, exportChainCheckpoints } from "./checkpoints.ts";
import { isStream, STREAMS, type Stream } from "./event.ts";
import { exportChain } from "./export.ts";
import { type VerifyOptions, type VerifyReport, verifyChains } from "./verify.ts";

/**
 * `charter audit …`: the commands, and the handlers the server runs them with when it holds the embedded
 * database (control socket). Each command is one `run*` function over a Database and plain arguments, so
 * the CLI and the server run the same code.
 */

/** Where the checkpoints live and the key that signs them; verification and export never create the key. */
export interface CheckpointAccess {
  /** The data directory's `checkpoints/`. */
  dir: string;
  clock: Clock;
  /** The signing key if it exists. */
  existingKey(): SigningKey | undefined;
  /** The signing key, created on first use (the first checkpoint of a fresh data directory). */
  key(): SigningKey;
}

/** How main.ts runs a maintenance command: on the database, or inside the running server. */
export type RunMaintenance = (
  name: string,
  args: Record<string, string>,
  command: (db: Database) => Promise<CommandResult>,
) => Promise<void>;

function text(args: Record<string, unknown>, name: string): string | undefined {
  const value = args[name];
  if (value === undefined) return undefined;
  if (typeof value !== "string") throw new TypeError(`--${name} must be text`);
  return value;
}

function streamArg(value: string | undefined): Stream | undefined {
  if (value !== undefined && !isStream(value)) {
    throw new TypeError(`--stream must be one of ${STREAMS.join(", ")}, got "${value}"`);
  }
  return value;
}

/** The report of `charter audit verify`: one line per failure, then a summary. */
export function formatVerifyReport(report: VerifyReport): CommandResult {
  const counts = Object.entries(report.checked)
    .map(([what, n]) => `${n} ${what}`)
    .join(", ");
  if (report.failures.length === 0) return { exitCode: 0, output: `audit verify: OK (checked ${counts})` };
  const lines = report.failures.map((f) => `FAIL  ${f.chainId}  seq ${f.sequence}  ${f.kind}: ${f.detail}`);
  return {
    exitCode: 1,
    output: [...lines, `audit verify: ${report.failures.length} failed (checked ${counts})`].join("\n"),
  };
}

/**
 * A check `charter audit verify` runs after the chains (the checkpoint checks): it adds its failures and
 * counts to the report it is given.
 */
export type VerifyCheck = (db: Database, report: VerifyReport, options: VerifyOptions) => Promise<VerifyReport>;

/**
 * The checkpoint checks `charter audit verify` runs after the chains. Without the signing key nothing can be
 * verified against the checkpoints: that fails once any checkpoint exists, since it may hide a rewrite.
 */
async function checkpointChecks(db: Database, access: CheckpointAccess): Promise<VerifyCheck[]> {
  const key = access.existingKey();
  if (key) return [checkpointCheck({ dir: access.dir, verifier: key })];
  const anyRow = await db.withPlatform((tx) => lastCheckpointRow(tx));
  if (!anyRow && readCheckpointFiles(access.dir).length === 0) return [];
  return [
    async (_db, report) => {
      report.failures.push({
        chainId: CHECKPOINT_CHAIN,
        sequence: 0,
        kind: "signing-key-missing",
        detail: "checkpoints exist but the platform's signing key (keys/signing.key) does not: they cannot be verified",
      });
      return report;
    },
  ];
}

export async function runAuditVerify(
  db: Database,
  args: Record<string, unknown>,
  access: CheckpointAccess,
): Promise<CommandResult> {
  const tenantId = text(args, "tenant");
  const stream = streamArg(text(args, "stream"));
  const options: VerifyOptions = { ...(tenantId === undefined ? {} : { tenantId }), ...(stream ? { stream } : {}) };
  let report = await verifyChains(db, options);
  for (const check of await checkpointChecks(db, access)) report = await check(db, report, options);
  return formatVerifyReport(report);
}

export async function runAuditExport(
  db: Database,
  args: Record<string, unknown>,
  access: CheckpointAccess,
): Promise<CommandResult> {
  const tenantId = text(args, "tenant");
  const stream = streamArg(text(args, "stream"));
  const out = text(args, "out");
  if (tenantId === undefined || stream === undefined) throw new TypeError("audit export needs --tenant and --stream");
  const key = access.existingKey();
  // The chain, then the checkpoints that cover it with their inclusion proofs: verifiable on its own.
  const exportTo = async (write: (line: string) => void) => {
    const result = await exportChain(db, { tenantId, stream }, write);
    const checkpoints = key
      ? await exportChainCheckpoints({ db, dir: access.dir, verifier: key, chainId: result.chainId }, write)
      : 0;
    return { ...result, checkpoints };
  };
  if (out === undefined) {
    const lines: string[] = [];
    await exportTo((line) => {
      lines.push(line);
    });
    return { exitCode: 0, output: lines.join("").trimEnd() };
  }
  // Ciphertexts and pseudonymous ids only, still the tenant's: readable by the operator's user alone.
  const fd = openSync(out, "wx", 0o600);
  try {
    const result = await exportTo((line) => {
      writeSync(fd, line);
    });
    return {
      exitCode: 0,
      output: `exported ${result.events} events of ${result.chainId} and ${result.checkpoints} checkpoints to ${out}`,
    };
  } finally {
    closeSync(fd);
  }
}

/** `charter audit checkpoint`: signs the current chain heads now. */
export function runAuditCheckpoint(db: Database, access: CheckpointAccess): Promise<CommandResult> {
  return checkpointCommand({ db, clock: access.clock, dir: access.dir, signingKey: access.key() });
}

/** The handlers the server serves on its control socket for these commands. */
export function auditSocketHandlers(db: Database, access: CheckpointAccess): Record<string, CommandHandler> {
  return {
    "audit-verify": (args) => runAuditVerify(db, args, access),
    "audit-export": (args) => runAuditExport(db, args, access),
    "audit-checkpoint": () => runAuditCheckpoint(db, access),
  };
}

/** Registers `charter audit` and its subcommands. */
export function auditCommands(program: Command, run: RunMaintenance, access: () => CheckpointAccess): void {
  const audit = program.command("audit").description("the tamper-evident audit log");

  audit
    .command("verify")
    .description(
      "verify the audit chains: every event against its hash, sequence and previous event, and each chain's " +
        "head; reports chain, sequence and kind of the first failure of each chain; exit code 0 only when all pass",
    )
    .option("--tenant <id>", "only this tenant's chains")
    .option("--stream <stream>", `only this stream (${STREAMS.join(", ")})`)
    .action(async (options: { tenant?: string; stream?: string }) => {
      const args = { ...options };
      await run("audit-verify", args, (db) => runAuditVerify(db, args, access()));
    });

  audit
    .command("export")
    .description(
      "export a tenant's chain as JSON Lines: one canonical event (RFC 8785) with its hash per line, verifiable " +
        "without Charter (see README); personal details stay encrypted",
    )
    .requiredOption("--tenant <id>", "the tenant")
    .requiredOption("--stream <stream>", `the stream (${STREAMS.join(", ")})`)
    .option("--out <file>", "write to this new file (mode 0600) instead of standard output")
    .action(async (options: { tenant: string; stream: string; out?: string }) => {
      // Resolved here: the server that may run the command has another working directory.
      const args = { ...options, ...(options.out === undefined ? {} : { out: resolve(options.out) }) };
      await run("audit-export", args, (db) => runAuditExport(db, args, access()));
    });

  audit
    .command("checkpoint")
    .description(
      "sign the current head of every audit chain now (a Merkle root signed with the platform key, kept in " +
        "checkpoints/ and in the database); the server does this every minute",
    )
    .action(async () => {
      await run("audit-checkpoint", {}, (db) => runAuditCheckpoint(db, access()));
    });

  audit
    .command("public-key")
    .description("print the platform's Ed25519 public key (PEM), which verifies checkpoints and exports")
    .action(() => {
      const key = access().existingKey();
      if (key) {
        process.stdout.write(key.publicKeyPem);
        return;
      }
      process.stderr.write("charter: there is no signing key yet: the first charter start creates keys/signing.key\n");
      process.exitCode = 1;
    });
}
