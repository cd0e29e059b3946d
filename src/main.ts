import { Command } from "commander";
import { type Config, ConfigError, loadConfig } from "./config.ts";
import { APPLICATION_INVENTORY } from "./modules/inventory.ts";
import { APPLICATION_TEMPLATES } from "./modules/templates.ts";
import { auditCommands } from "./platform/audit/cli.ts";
import { createAudit } from "./platform/audit/index.ts";
import { type CommandResult, callControlSocket, type RunMaintenance } from "./platform/cli/control-socket.ts";
import { systemClock } from "./platform/clock.ts";
import { keysCommands } from "./platform/crypto/cli.ts";
import { createKeyRing } from "./platform/crypto/key-ring.ts";
import { loadMasterKey, MasterKeyError, newMasterKeyFile } from "./platform/crypto/master-key.ts";
import { MasterKeyRotationError } from "./platform/crypto/master-rotation.ts";
import { existingSigningKey, loadSigningKey } from "./platform/crypto/signing-key.ts";
import { DataDirError, prepareDataDir } from "./platform/data-dir.ts";
import {
  createDatabase,
  type Database,
  DataDirLocked,
  engineFor,
  MigrationError,
  UnsafeRuntimeRoleError,
} from "./platform/db/index.ts";
import { createMailer, mailOutboxCommand } from "./platform/mail/index.ts";
import {
  controlSocketPath,
  operatorSetupLinkCommand,
  resetFactorsCommand,
  runDoctor,
  runMigrate,
  startServer,
} from "./server.ts";

/** Another process holds the embedded database and no server answers on its control socket. */
class ServerUnreachable extends Error {
  override name = "ServerUnreachable";
}

/** Errors that are the user's to fix: printed as one line, never as a stack trace. */
const USER_ERRORS = [
  ConfigError,
  MasterKeyError,
  DataDirError,
  MigrationError,
  UnsafeRuntimeRoleError,
  DataDirLocked,
  ServerUnreachable,
  MasterKeyRotationError,
];

function fail(error: unknown): never {
  const known = USER_ERRORS.some((type) => error instanceof type);
  const message = error instanceof Error ? error.message : String(error);
  process.stderr.write(`charter: ${message}\n`);
  if (!known && process.env.LOG_LEVEL === "debug" && error instanceof Error) process.stderr.write(`${error.stack}\n`);
  process.exit(known ? 2 : 1);
}

/** The value of `fn`, or its error reported as the CLI reports errors. */
function userError<T>(fn: () => T): T {
  try {
    return fn();
  } catch (error) {
    fail(error);
  }
}

const config = (): Config => userError(loadConfig);

/**
 * Runs a maintenance command on the database. When the server holds the embedded database, the command runs
 * inside the server through its control socket instead, so the service never has to stop for it.
 */
async function maintenance(
  name: string,
  cfg: Config,
  run: (db: Database) => Promise<CommandResult>,
  args: Record<string, unknown> = {},
): Promise<CommandResult> {
  let engine: Awaited<ReturnType<typeof engineFor>>;
  try {
    engine = await engineFor(cfg);
  } catch (error) {
    if (!(error instanceof DataDirLocked)) throw error;
    try {
      return await callControlSocket(controlSocketPath(cfg), name, args);
    } catch {
      throw new ServerUnreachable(
        `${error.message}, and its control socket does not answer: is another charter command running?`,
      );
    }
  }
  const db = createDatabase(engine);
  try {
    return await run(db);
  } finally {
    await db.close();
  }
}

function report(result: CommandResult): never {
  (result.exitCode === 0 ? process.stdout : process.stderr).write(`${result.output}\n`);
  process.exit(result.exitCode);
}

const program = new Command()
  .name("charter")
  .description("Charter: multi-tenant CRM and workflow automation with executable privacy and security promises")
  .showHelpAfterError();

program
  .command("start")
  .description("run the server (migrates the database first)")
  .action(async () => {
    const cfg = config();
    // The operator setup link goes to an interactive terminal only; piped output may end up in a log.
    const terminal = process.stdout.isTTY ? (message: string) => process.stdout.write(message) : undefined;
    const server = await startServer(cfg, terminal ? { terminal } : {}).catch(fail);
    process.stdout.write(`charter: serving on ${server.url} (public URL ${cfg.publicUrl.origin})\n`);
    const stop = (signal: string) => {
      process.stdout.write(`charter: ${signal}: draining requests, then closing the database\n`);
      server.shutdown().then(
        () => process.exit(0),
        (error) => fail(error),
      );
    };
    process.once("SIGTERM", () => stop("SIGTERM"));
    process.once("SIGINT", () => stop("SIGINT"));
  });

program
  .command("migrate")
  .description("apply pending database migrations")
  .action(async () => {
    const cfg = config();
    // As on start, the key comes first: a fresh data directory gets its key here, and a key that cannot be
    // loaded stops the command before it touches the database.
    userError(() => loadMasterKey(cfg.masterKey, prepareDataDir(cfg.dataDir)));
    report(await maintenance("migrate", cfg, runMigrate).catch(fail));
  });

program
  .command("doctor")
  .description("check the controls that keep Charter's promises; exit code 0 only when all pass")
  .action(async () => {
    const cfg = config();
    report(await maintenance("doctor", cfg, (db) => runDoctor(db, cfg)).catch(fail));
  });

const mail = program.command("mail").description("outbound mail");

mail
  .command("outbox")
  .description(
    "list the newest 50 messages not delivered: the outbox (mail kept when no CHARTER_SMTP_URL is set, as in " +
      "embedded mode) and messages the pre-send gate suppressed. This is how a developer on the embedded " +
      "database reads mail, so recipients and messages are shown decrypted: it needs the master key",
  )
  .action(async () => {
    const cfg = config();
    const outbox = (db: Database) => {
      const paths = prepareDataDir(cfg.dataDir);
      // Reads only: no journal, so nothing here can touch the file the server appends to.
      const keyRing = createKeyRing({ db, masterKey: loadMasterKey(cfg.masterKey, paths), clock: systemClock });
      return mailOutboxCommand(createMailer({ db, keyRing, clock: systemClock, templates: APPLICATION_TEMPLATES }));
    };
    report(await maintenance("mail-outbox", cfg, outbox).catch(fail));
  });

program
  .command("operator")
  .description("the platform's operators")
  .command("setup-link")
  .description(
    "print a fresh one-time link (valid one hour) that creates the first operator; refused once one exists. " +
      "Earlier unused links stop working",
  )
  .action(async () => {
    const cfg = config();
    const run = (db: Database) => operatorSetupLinkCommand({ db, clock: systemClock, config: cfg });
    report(await maintenance("operator-setup-link", cfg, run).catch(fail));
  });

program
  .command("account")
  .description("users' accounts")
  .command("reset-factors")
  .argument("<email>", "the address of the verified account")
  .description(
    "reset the sign-in factors (the password) of someone who lost them. It takes effect 72 hours later: the " +
      "user is told by email at once and can cancel it by signing in; then their password stops working, every " +
      "session ends and they get a link to choose a new one",
  )
  .action(async (email: string) => {
    const cfg = config();
    // A running server does it, on any database: its queue sends the user's notice. Without one, only mail
    // kept in the outbox (no CHARTER_SMTP_URL) can be written here: nothing here could deliver the rest.
    const served = await callControlSocket(controlSocketPath(cfg), "account-reset-factors", { email }).catch(
      () => undefined,
    );
    if (served) report(served);
    const direct = async (db: Database): Promise<CommandResult> => {
      if (cfg.mail.smtp) {
        return {
          exitCode: 1,
          output:
            "charter: the user must be told by email, and mail is sent by the server: start it, then run this again",
        };
      }
      const keyRing = createKeyRing({
        db,
        masterKey: loadMasterKey(cfg.masterKey, prepareDataDir(cfg.dataDir)),
        clock: systemClock,
      });
      const mailer = createMailer({ db, keyRing, clock: systemClock, templates: APPLICATION_TEMPLATES });
      const audit = createAudit({ db, keyRing, clock: systemClock });
      return resetFactorsCommand({ db, clock: systemClock, keyRing, audit, mailer, config: cfg }, email);
    };
    report(await maintenance("account-reset-factors", cfg, direct, { email }).catch(fail));
  });

/** How `charter audit …` and `charter keys …` run their commands: on the database, or inside the running server. */
const runMaintenance: RunMaintenance = async (name, args, run) => {
  report(await maintenance(name, config(), run, args).catch(fail));
};

auditCommands(program, runMaintenance, () => {
  const cfg = config();
  const paths = prepareDataDir(cfg.dataDir);
  return {
    dir: paths.checkpoints,
    clock: systemClock,
    existingKey: () => existingSigningKey(paths),
    key: () => loadSigningKey(paths),
    paths,
    callServer: (name) => callControlSocket(controlSocketPath(cfg), name).catch(() => undefined),
  };
});

keysCommands(program, runMaintenance, () => {
  const cfg = config();
  const paths = prepareDataDir(cfg.dataDir);
  return {
    masterKey: () => userError(() => loadMasterKey(cfg.masterKey, paths)),
    newKey: (path) => userError(() => newMasterKeyFile(path, paths)),
    deps: (db, masterKey) => {
      // The audit event of the rotation names no one: a key ring over the old key is all it could need.
      const keyRing = createKeyRing({ db, masterKey, clock: systemClock });
      return {
        db,
        clock: systemClock,
        inventory: APPLICATION_INVENTORY,
        audit: createAudit({ db, keyRing, clock: systemClock }),
      };
    },
    callServer: (name) => callControlSocket(controlSocketPath(cfg), name).catch(() => undefined),
  };
});

await program.parseAsync(process.argv);
