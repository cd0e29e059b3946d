import { resolveTxt } from "node:dns/promises";
import { readFileSync } from "node:fs";
import type { Server } from "node:net";
import { join } from "node:path";
import type { FastifyInstance } from "fastify";
import { type Config, ConfigError } from "./config.ts";
import { auditLogRoutes } from "./modules/audit-log/index.ts";
import {
  type FactorResetDeps,
  FactorResetError,
  requestFactorReset,
  scheduleFactorResets,
} from "./modules/identity/factor-resets.ts";
import { createIdentity, type IdentityDeps } from "./modules/identity/index.ts";
import { ensureOperatorSetupLink, SETUP_LINK_MINUTES } from "./modules/identity/operator.ts";
import { createPasswordHasher } from "./modules/identity/passwords.ts";
import { APPLICATION_INVENTORY } from "./modules/inventory.ts";
import { APPLICATION_TEMPLATES } from "./modules/templates.ts";
import { scheduleCheckpoints } from "./platform/audit/checkpoints.ts";
import { auditSocketHandlers } from "./platform/audit/cli.ts";
import { AUDIT_CONTROLS } from "./platform/audit/controls.ts";
import { type CommandResult, serveControlSocket } from "./platform/cli/control-socket.ts";
import { type Clock, systemClock } from "./platform/clock.ts";
import { NormalisationError } from "./platform/crypto/blind-index.ts";
import { keysSocketHandlers } from "./platform/crypto/cli.ts";
import { deriveKey } from "./platform/crypto/derive.ts";
import { openJournal } from "./platform/crypto/journal.ts";
import { type ReplayHandlers, replayJournal } from "./platform/crypto/journal-replay.ts";
import { loadMasterKey } from "./platform/crypto/master-key.ts";
import { checkMasterKeyRotations } from "./platform/crypto/master-rotation.ts";
import { loadSigningKey } from "./platform/crypto/signing-key.ts";
import { prepareDataDir } from "./platform/data-dir.ts";
import { type Database, openConfiguredDatabase } from "./platform/db/index.ts";
import { ControlRegistry, formatResults } from "./platform/doctor/controls.ts";
import { kernelControls } from "./platform/doctor/kernel-controls.ts";
import { buildApp } from "./platform/http/app.ts";
import { kernelRoutes } from "./platform/http/kernel-routes.ts";
import type { AnyRoute } from "./platform/http/routes.ts";
import type { Jobs } from "./platform/jobs/index.ts";
import { createLogger } from "./platform/log.ts";
import { mailOutboxCommand } from "./platform/mail/index.ts";
import { createOutboundClient } from "./platform/net/index.ts";
import { createRateLimiter } from "./platform/ratelimit/limiter.ts";
import { createPlatformServices, type PlatformServices } from "./platform/services.ts";

export interface RunningServer {
  app: FastifyInstance;
  db: Database;
  services: PlatformServices;
  /** The address the server listens on. */
  url: string;
  /** Stops accepting, drains in-flight requests, and only then closes the database. */
  shutdown(): Promise<void>;
}

/** The controls `charter doctor` runs, in the server and in the CLI alike. */
export function controlRegistry(): ControlRegistry {
  return new ControlRegistry().register(...kernelControls(APPLICATION_INVENTORY), ...AUDIT_CONTROLS);
}

export async function runDoctor(db: Database, config: Config): Promise<CommandResult> {
  const results = await controlRegistry().run({ db, config });
  return { exitCode: results.every((r) => r.ok) ? 0 : 1, output: formatResults(results) };
}

export async function runMigrate(db: Database): Promise<CommandResult> {
  const applied = await db.migrate();
  return { exitCode: 0, output: applied === 0 ? "the database is up to date" : `applied ${applied} migrations` };
}

export const controlSocketPath = (config: Pick<Config, "dataDir">) =>
  join(prepareDataDir(config.dataDir).run, "charter.sock");

type SetupDeps = Parameters<typeof ensureOperatorSetupLink>[0];

/** Until an operator exists, each start makes a fresh one-time setup link and shows it on the terminal. */
async function announceOperatorSetup(
  deps: SetupDeps,
  terminal: ((message: string) => void) | undefined,
  warn: (message: string) => void,
): Promise<void> {
  if (!terminal) {
    if (await ensureOperatorSetupLink(deps)) {
      warn("charter: no operator exists yet: run `charter operator setup-link` on this machine for a setup link");
    }
    return;
  }
  const link = await ensureOperatorSetupLink(deps);
  if (link) {
    terminal(
      `charter: no operator exists yet. Within ${SETUP_LINK_MINUTES} minutes, open this one-time link to create ` +
        `the operator account (it is shown here only, never logged):\n  ${link}\n`,
    );
  }
}

/** `charter operator setup-link`: a fresh one-time link, printed by the CLI on the asking terminal. */
export async function operatorSetupLinkCommand(deps: SetupDeps): Promise<CommandResult> {
  const link = await ensureOperatorSetupLink(deps);
  return link
    ? { exitCode: 0, output: `one-time operator setup link, valid ${SETUP_LINK_MINUTES} minutes:\n  ${link}` }
    : { exitCode: 1, output: "an operator exists already: setup links are for the first operator only" };
}

/** "2026-01-04 09:30": the minute a reset takes effect, in UTC. */
const utcMinute = (at: Date) => at.toISOString().slice(0, 16).replace("T", " ");

/**
 * `charter account reset-factors <email>`: asks for a delayed reset of the sign-in factors of the verified
 * account holding the address (its owner is mailed and can cancel it). Exit code 1 when refused.
 */
export async function resetFactorsCommand(deps: FactorResetDeps, email: unknown): Promise<CommandResult> {
  if (typeof email !== "string") return { exitCode: 1, output: "charter: give the email address of the account" };
  try {
    const dueAt = await requestFactorReset(deps, email);
    return {
      exitCode: 0,
      output:
        `a reset of the sign-in factors of this account takes effect at ${utcMinute(dueAt)} UTC; ` +
        "the user has been told by email and can cancel it by signing in",
    };
  } catch (error) {
    if (error instanceof FactorResetError) return { exitCode: 1, output: `charter: ${error.message}` };
    if (error instanceof NormalisationError) return { exitCode: 1, output: "charter: that is not an email address" };
    throw error;
  }
}

/** Reads a configured TLS file; a missing or unreadable one is a configuration mistake naming its variable. */
function readTlsFile(variable: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (error) {
    throw new ConfigError(`${variable} ${path} cannot be read (${(error as NodeJS.ErrnoException).code ?? error})`);
  }
}

/** Starts Charter: data directory, master key, database (migrated and checked), HTTP, control socket. */
export async function startServer(
  config: Config,
  options: {
    clock?: Clock;
    routes?: AnyRoute[];
    log?: boolean;
    warn?: (message: string) => void;
    /** What journalled destructions must re-run beyond the keys (journal-replay.ts). */
    replayHandlers?: ReplayHandlers;
    /** Registers job kinds and schedules before the queue starts. */
    defineJobs?: (jobs: Jobs) => void;
    /**
     * Writes to the terminal the server was started from, when it has one: the operator setup link goes
     * there and nowhere else (never to the log). Without it, the link is to be asked for with
     * `charter operator setup-link`.
     */
    terminal?: (message: string) => void;
  } = {},
): Promise<RunningServer> {
  const clock = options.clock ?? systemClock;
  const paths = prepareDataDir(config.dataDir);
  const masterKey = loadMasterKey(config.masterKey, paths, options.warn);
  const https = config.tls && {
    key: readTlsFile("CHARTER_TLS_KEY", config.tls.keyPath),
    cert: readTlsFile("CHARTER_TLS_CERT", config.tls.certPath),
    minVersion: config.tls.minVersion,
  };
  const db = await openConfiguredDatabase(config);
  const rateLimiter = createRateLimiter({ db, clock, hashKey: deriveKey(masterKey.bytes(), "rate-limit/v1") });
  let services: PlatformServices | undefined;
  let socket: Server | undefined;
  let app: FastifyInstance | undefined;
  try {
    // After the database checks, so a start they refuse generates no signing key; a tampered journal stops here.
    const signingKey = loadSigningKey(paths, options.warn);
    const journal = openJournal({ dir: paths.journal, signingKey, clock });
    const log = createLogger(options.log === false ? "silent" : config.logLevel);
    services = createPlatformServices({
      config,
      db,
      clock,
      paths,
      masterKey,
      journal,
      log,
      templates: APPLICATION_TEMPLATES,
    });
    const { keyRing, jobs, mailer, audit, files } = services;
    const identityDeps: IdentityDeps = {
      db,
      clock,
      keyRing,
      audit,
      mailer,
      rateLimiter,
      passwords: createPasswordHasher(),
      files,
      config,
      // Tenants' identity providers are called under the platform's SSRF rules: public addresses only.
      outbound: createOutboundClient({ userAgent: "Charter" }),
      dns: { resolveTxt },
    };
    const identity = createIdentity(identityDeps);
    const checkpointWriter = { db, clock, dir: paths.checkpoints, signingKey };
    scheduleCheckpoints(jobs, checkpointWriter);
    scheduleFactorResets(jobs, identityDeps);
    options.defineJobs?.(jobs);
    await checkMasterKeyRotations(db, masterKey);
    await keyRing.ensurePlatformKey();
    // Destructions journalled but never committed, or undone by a restore, happen before anything is served.
    await replayJournal({ db, entries: journal.entriesAtOpen, clock, handlers: options.replayHandlers });
    await jobs.start();
    const self = () => app as FastifyInstance;
    app = await buildApp({
      config,
      db,
      clock,
      rateLimiter,
      routes: [
        ...identity.routes,
        // The audit log API verifies against the checkpoints this server signs.
        ...auditLogRoutes({
          db,
          clock,
          audit,
          rateLimiter,
          checkpoints: { dir: paths.checkpoints, verifier: signingKey },
        }),
        ...(options.routes ?? []),
        ...kernelRoutes({ db, app: self }),
      ],
      accessControl: identity.accessControl,
      ...(https ? { https } : {}),
      ...(options.log === undefined ? {} : { log: options.log }),
    });
    const url = await app.listen({ host: config.host, port: config.port });
    await announceOperatorSetup({ db, clock, config }, options.terminal, options.warn ?? console.warn);
    socket = await serveControlSocket(controlSocketPath(config), {
      doctor: () => runDoctor(db, config),
      migrate: () => runMigrate(db),
      "mail-outbox": () => mailOutboxCommand(mailer),
      "operator-setup-link": () => operatorSetupLinkCommand({ db, clock, config }),
      "account-reset-factors": (args) => resetFactorsCommand(identityDeps, args.email),
      ...keysSocketHandlers(),
      ...auditSocketHandlers(db, {
        dir: paths.checkpoints,
        clock,
        existingKey: () => signingKey,
        key: () => signingKey,
      }),
    });
    const running = app;
    const openSocket = socket;
    let stopping: Promise<void> | undefined;
    return {
      app: running,
      db,
      services,
      url,
      shutdown: () => {
        stopping ??= (async () => {
          await new Promise<void>((resolve) => openSocket.close(() => resolve()));
          await running.close();
          await jobs.stop();
          await rateLimiter.close();
          await db.close();
        })();
        return stopping;
      },
    };
  } catch (error) {
    socket?.close();
    await app?.close();
    await services?.jobs.stop();
    await rateLimiter.close();
    await db.close();
    throw error;
  }
}
