import { accessSync, constants, realpathSync, statSync } from "node:fs";
import { relative, resolve } from "node:path";
import { sql } from "kysely";
import { modeText } from "../crypto/key-file.ts";
import { existingSigningKey, interruptedRotation, SigningKeyError, signingKeyPath } from "../crypto/signing-key.ts";
import { type DataDirPaths, prepareDataDir } from "../data-dir.ts";
import type { Database } from "../db/index.ts";
import { type Control, evidenceFrom } from "../doctor/controls.ts";
import { chainHeads } from "./chains.ts";
import { isUnreadable, lastCheckpointRow, lastFileRecords } from "./checkpoint-store.ts";
import { verifyCheckpointsReport } from "./checkpoint-verify.ts";
import { CHECKPOINT_CADENCE } from "./checkpoints.ts";
import { verifyChains } from "./verify.ts";

/** Whether `inner` is `outer` or lies inside it (both resolved through symbolic links where they exist). */
function inside(inner: string, outer: string): boolean {
  const real = (path: string) => {
    try {
      return realpathSync(path);
    } catch {
      return resolve(path);
    }
  };
  const rel = relative(real(outer), real(inner));
  return rel === "" || (!rel.startsWith("..") && !rel.startsWith("/"));
}

/** The PostgreSQL server's data directory, when the runtime role may read it (only privileged roles may). */
async function serverDataDirectory(db: Database): Promise<string | undefined> {
  try {
    const { rows } = await db.withPlatform((tx) =>
      sql<{ dir: string }>`SELECT current_setting('data_directory') AS dir`.execute(tx),
    );
    return rows[0]?.dir;
  } catch {
    return undefined;
  }
}

/** Whether any checkpoint exists, in the table or the files: from then on the signing key is needed. */
async function anyCheckpoint(db: Database, paths: DataDirPaths): Promise<boolean> {
  const row = await db.withPlatform((tx) => lastCheckpointRow(tx));
  return row !== undefined || lastFileRecords(paths.checkpoints, 1).length > 0;
}

const checkpointStore: Control = {
  id: "audit.checkpoint-store",
  title: "The audit checkpoint store is reachable and kept outside the database directory",
  promises: ["L3"],
  period: "PT1H",
  async check({ db, config }) {
    const paths = prepareDataDir(config.dataDir);
    const dir = paths.checkpoints;
    const problems: string[] = [];
    try {
      if (!statSync(dir).isDirectory()) problems.push(`${dir} is not a directory`);
      accessSync(dir, constants.R_OK | constants.W_OK);
    } catch (error) {
      problems.push(`${dir} cannot be read and written (${(error as NodeJS.ErrnoException).code ?? error})`);
    }
    let where: string;
    if (config.databaseUrl === undefined) {
      if (inside(dir, paths.db) || inside(paths.db, dir)) {
        problems.push(`${dir} and the embedded database ${paths.db} share a directory`);
      }
      where = `apart from the embedded database in ${paths.db}`;
    } else {
      const serverDir = await serverDataDirectory(db);
      if (serverDir !== undefined && (inside(dir, serverDir) || inside(serverDir, dir))) {
        problems.push(`${dir} and the PostgreSQL data directory ${serverDir} share a directory`);
      }
      where =
        serverDir === undefined
          ? "on this machine, the database on the PostgreSQL server of DATABASE_URL"
          : `apart from the PostgreSQL data directory ${serverDir}`;
    }
    return evidenceFrom(problems, `checkpoints are written to ${dir}, ${where}`);
  },
};

const signingKeyFile: Control = {
  id: "audit.signing-key",
  title: "The audit signing key is present and readable by the service alone",
  promises: ["L3"],
  period: "PT1H",
  async check({ db, config }) {
    const paths = prepareDataDir(config.dataDir);
    const path = signingKeyPath(paths);
    const interrupted = interruptedRotation(paths);
    if (interrupted) return { ok: false, evidence: interrupted };
    let key: ReturnType<typeof existingSigningKey>;
    try {
      // Refuses a file that group or others can access, naming the fix.
      key = existingSigningKey(paths);
    } catch (error) {
      if (error instanceof SigningKeyError) return { ok: false, evidence: error.message };
      throw error;
    }
    if (!key) {
      return (await anyCheckpoint(db, paths))
        ? { ok: false, evidence: `${path} is missing: the checkpoints cannot be verified or continued` }
        : { ok: true, evidence: `no signing key yet and nothing signed: the first start creates ${path} (mode 0600)` };
    }
    const retired = key.retired.length > 0 ? `; the public halves of ${key.retired.length} retired keys are kept` : "";
    return {
      ok: true,
      evidence: `Ed25519 key ${key.keyId} in ${path}, mode ${modeText(statSync(path).mode)}, outside the database${retired}`,
    };
  },
};

const INTERVAL_MS = CHECKPOINT_CADENCE.minutes * 60_000;

const checkpointFresh: Control = {
  id: "audit.checkpoint-fresh",
  title: "The last audit checkpoint is younger than two checkpoint intervals",
  promises: ["L3"],
  period: "PT5M",
  async check({ db }) {
    const { last, heads } = await db.withPlatform(async (tx) => ({
      last: await lastCheckpointRow(tx),
      heads: (await chainHeads(tx)).length,
    }));
    if (last === undefined) {
      return heads === 0
        ? { ok: true, evidence: "no audit chain yet, so nothing to checkpoint" }
        : { ok: false, evidence: `${heads} audit chains and no checkpoint: is the server running its schedule?` };
    }
    if (isUnreadable(last))
      return { ok: false, evidence: `${last.where} is not a checkpoint: run charter audit verify` };
    const age = Date.now() - Date.parse(last.record.at);
    const limit = 2 * INTERVAL_MS;
    return age <= limit
      ? { ok: true, evidence: `checkpoint ${last.record.seq} was made ${Math.round(age / 1000)} s ago` }
      : {
          ok: false,
          evidence: `the last checkpoint (${last.record.seq}, at ${last.record.at}) is older than ${limit / 1000} s: is the server running its schedule?`,
        };
  },
};

const chainsVerify: Control = {
  id: "audit.chains",
  title: "Every audit chain verifies, and matches the signed checkpoints",
  promises: ["L3"],
  period: "PT1H",
  async check({ db, config }) {
    const paths = prepareDataDir(config.dataDir);
    const report = await verifyChains(db);
    let key: ReturnType<typeof existingSigningKey>;
    try {
      key = existingSigningKey(paths);
    } catch {
      key = undefined;
    }
    if (key) await verifyCheckpointsReport(report, { db, dir: paths.checkpoints, verifier: key });
    else if (await anyCheckpoint(db, paths)) {
      return { ok: false, evidence: "there are checkpoints but no signing key to verify them with" };
    }
    const first = report.failures[0];
    return first
      ? {
          ok: false,
          evidence: `${report.failures.length} failures; first: ${first.kind} at ${first.chainId} sequence ${first.sequence} (${first.detail}); run charter audit verify`,
        }
      : {
          ok: true,
          evidence: `${report.checked.chains} chains, ${report.checked.events} events${key ? `, ${report.checked.checkpoints ?? 0} checkpoints` : ""} verified`,
        };
  },
};

/** The audit log's controls, run by `charter doctor`. */
export const AUDIT_CONTROLS: Control[] = [chainsVerify, checkpointStore, signingKeyFile, checkpointFresh];
