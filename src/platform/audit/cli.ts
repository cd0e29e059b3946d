import { closeSync, openSync, writeSync } from "node:fs";
import { resolve } from "node:path";
import type { Command } from "commander";
import type { CommandHandler, CommandResult, RunMaintenance } from "../cli/control-socket.ts";
import type { Clock } from "../clock.ts";
import type { SigningKey } from "../crypto/signing-key.ts";
import type { DataDirPaths } from "../data-dir.ts";
import type { Database } from "../db/index.ts";
import { KeyRotationError, rotateSigningKey } from "./checkpoint-rotation.ts";
import { lastCheckpointRow, lastFileRecords } from "./checkpoint-store.ts";
import { CHECKPOINT_CHAIN, checkpointCheck, exportChainCheckpoints } from "./checkpoint-verify.ts";
import { CheckpointError, checkpointCommand } from "./checkpoints.ts";
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

/** What the CLI needs beyond the server's handlers: the data directory, and whether a server runs on it. */
export interface AuditCliAccess extends CheckpointAccess {
  paths: DataDirPaths;
  /** Runs a command inside the server of this data directory; undefined when no server answers. */
  callServer(name: string): Promise<CommandResult | undefined>;
}

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
  if (!anyRow && lastFileRecords(access.dir, 1).length === 0) return [];
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

/** `charter audit rotate-signing-key`, with no server running: hands signing to a new key. */
export async function runRotateSigningKey(
  db: Database,
  access: Pick<AuditCliAccess, "clock" | "paths">,
): Promise<CommandResult> {
  try {
    const { retired, current, seq, resumed } = await rotateSigningKey({ db, clock: access.clock, paths: access.paths });
    return {
      exitCode: 0,
      output:
        `${resumed ? "completed an interrupted rotation" : "rotated the signing key"}: key ${current.keyId} signs ` +
        `from record ${seq} of the checkpoint chain on, and the destruction journal; key ${retired.keyId} is retired ` +
        "(its public half kept, its private half removed). Publish the new public key (charter audit public-key).",
    };
  } catch (error) {
    if (error instanceof KeyRotationError || error instanceof CheckpointError) {
      return { exitCode: 1, output: `charter: ${error.message}` };
    }
    throw error;
  }
}

/** `charter audit public-key`: the current public key (PEM), or with `history` every key, oldest first. */
export function formatPublicKeys(key: SigningKey, history: boolean): string {
  if (!history) return key.publicKeyPem;
  const retired = key.retired.map(
    (k) =>
      `key ${k.keyId}: retired at ${k.retiredAt} by record ${k.rotation} of the checkpoint chain, ` +
      `succeeded by ${k.successor}\n${k.publicKeyPem}`,
  );
  return [...retired, `key ${key.keyId}: current\n${key.publicKeyPem}`].join("");
}

/**
 * The handlers the server serves on its control socket for these commands. A rotation is refused: the server
 * holds the key it loaded and would go on signing with the retired one.
 */
export function auditSocketHandlers(db: Database, access: CheckpointAccess): Record<string, CommandHandler> {
  return {
    "audit-verify": (args) => runAuditVerify(db, args, access),
    "audit-export": (args) => runAuditExport(db, args, access),
    "audit-checkpoint": () => runAuditCheckpoint(db, access),
    "audit-rotate-signing-key": async () => ({
      exitCode: 1,
      output:
        "charter: the signing key cannot be rotated while the server runs (it signs with the key it loaded): " +
        "stop it, run charter audit rotate-signing-key, then start it again",
    }),
  };
}

/** Registers `charter audit` and its subcommands. */
export function auditCommands(program: Command, run: RunMaintenance, access: () => AuditCliAccess): void {
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
    .option("--history", "print every key the platform signed with, oldest first, each after a line naming it")
    .action((options: { history?: boolean }) => {
      const key = access().existingKey();
      if (key) {
        process.stdout.write(formatPublicKeys(key, options.history === true));
        return;
      }
      process.stderr.write("charter: there is no signing key yet: the first charter start creates keys/signing.key\n");
      process.exitCode = 1;
    });

  audit
    .command("rotate-signing-key")
    .description(
      "replace the platform's Ed25519 signing key (checkpoints and the destruction journal) with a new one: the " +
        "checkpoint chain records the hand-over, signed by both keys; the old public key is kept to verify what " +
        "it signed, its private key removed. Stop the server first",
    )
    .action(async () => {
      const cli = access();
      // A server signs with the key it loaded: it answers with a refusal, and nothing is rotated under it.
      const served = await cli.callServer("audit-rotate-signing-key");
      if (served) {
        (served.exitCode === 0 ? process.stdout : process.stderr).write(`${served.output}\n`);
        process.exitCode = served.exitCode;
        return;
      }
      await run("audit-rotate-signing-key", {}, (db) => runRotateSigningKey(db, cli));
    });
}
