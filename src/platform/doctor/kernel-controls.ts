import { X509Certificate } from "node:crypto";
import { existsSync, readFileSync, statSync } from "node:fs";
import { isIP } from "node:net";
import { join } from "node:path";
import { JOURNAL_FILE, readJournal } from "../crypto/journal.ts";
import { unappliedEntries } from "../crypto/journal-replay.ts";
import { keyFileCheck, loadMasterKey } from "../crypto/master-key.ts";
import { masterKeyWrapsEverything } from "../crypto/master-rotation.ts";
import { existingSigningKey, signingKeyPath } from "../crypto/signing-key.ts";
import { prepareDataDir } from "../data-dir.ts";
import { catalogViolations, inspectRuntimeRole, PLATFORM_TABLES, runtimeRoleProblems } from "../db/index.ts";
import { type Inventory, inventoryCatalogProblems, PLATFORM_INVENTORY, validateInventory } from "../inventory/index.ts";
import { type Control, evidenceFrom } from "./controls.ts";

const runtimeRole: Control = {
  id: "db.runtime-role",
  title: "Requests run as a role that cannot bypass row-level security",
  promises: ["T1"],
  period: "PT1H",
  async check({ db }) {
    const report = await inspectRuntimeRole(db);
    const problems = runtimeRoleProblems(report);
    return evidenceFrom(
      problems,
      `requests run as ${report.role}: not a superuser, no BYPASSRLS, owns no tenant tables, cannot become a privileged role`,
    );
  },
};

const tenancyCatalog: Control = {
  id: "db.tenancy-catalog",
  title: "Every table follows the tenancy rules",
  promises: ["T1", "T8"],
  period: "PT1H",
  async check({ db }) {
    const violations = await db.withPlatform((tx) => catalogViolations(tx, PLATFORM_TABLES));
    return evidenceFrom(
      violations,
      "every tenant table forces row-level security with the tenant policy; keys, unique constraints and foreign keys include tenant_id",
    );
  },
};

/** The inventory control checks the application's whole inventory: the platform's and every module's. */
const dataInventory = (inventory: Inventory): Control => ({
  id: "privacy.data-inventory",
  title: "Every column of every table is classified in the data inventory",
  promises: ["P1"],
  period: "PT1H",
  async check({ db }) {
    const problems = [
      ...validateInventory(inventory),
      ...(await db.withPlatform((tx) => inventoryCatalogProblems(tx, inventory))),
    ];
    return evidenceFrom(problems, "every column is classified (category, purpose, legal basis, erasure, retention)");
  },
});

const migrations: Control = {
  id: "db.migrations",
  title: "The database schema is the one this version expects",
  promises: ["T1"],
  period: "PT1H",
  async check({ db }) {
    const pending = await db.pendingMigrations();
    return pending.length > 0
      ? { ok: false, evidence: `${pending.length} migrations pending: run charter migrate` }
      : { ok: true, evidence: "all migrations applied, checksums match" };
  },
};

const masterKeyFile: Control = {
  id: "keys.master-key",
  title: "The master key is kept apart from the database, readable by the service alone",
  promises: ["E4"],
  period: "PT1H",
  async check({ config }) {
    return keyFileCheck(config.masterKey, prepareDataDir(config.dataDir));
  },
};

const masterKeyWraps: Control = {
  id: "keys.master-key-wraps",
  title: "The configured master key wraps every platform and tenant key, and no rotation of it is unfinished",
  promises: ["E4"],
  period: "PT1H",
  async check({ db, config }) {
    const source = config.masterKey;
    // Doctor never makes a key: a data directory with none yet has nothing wrapped.
    if (source.kind === "generated" && !existsSync(source.path)) {
      return { ok: false, evidence: `no master key at ${source.path} yet: charter migrate or start generates it` };
    }
    return masterKeyWrapsEverything(
      db,
      loadMasterKey(source, prepareDataDir(config.dataDir), () => {}),
    );
  },
};

const destructionJournal: Control = {
  id: "keys.destruction-journal",
  title: "Every key destruction is journalled, signed and chained, and no journalled destruction was lost",
  promises: ["P4", "E4"],
  period: "PT1H",
  async check({ db, config }) {
    const paths = prepareDataDir(config.dataDir);
    const signingKey = existingSigningKey(paths);
    if (!signingKey) {
      return existsSync(join(paths.journal, JOURNAL_FILE))
        ? { ok: false, evidence: `${signingKeyPath(paths)} is missing: the destruction journal cannot be verified` }
        : { ok: true, evidence: "no destruction journalled yet" };
    }
    // Throws (and so fails the control) on a bad signature, a broken chain, or a journal shorter than what
    // the database applied.
    const entries = readJournal(paths.journal, signingKey);
    const unapplied = await unappliedEntries(db, entries);
    return {
      ok: true,
      evidence:
        `${entries.length} journal entries, each signed by key ${signingKey.keyId}` +
        `${signingKey.retired.length > 0 ? " or a key it retired, in their order," : ""} and chained; ` +
        `${unapplied.length} journalled since the last start-up's replay`,
    };
  },
};

const LOOPBACK_NAMES = new Set(["localhost", "::1", "[::1]"]);

/** A host name or address (IPv6 bracketed or not) that only this machine can reach. */
function isLoopback(host: string): boolean {
  return LOOPBACK_NAMES.has(host) || (isIP(host) === 4 && host.startsWith("127."));
}

const tlsSettings: Control = {
  id: "tls.settings",
  title: "Traffic is encrypted with TLS 1.2 or higher",
  promises: ["E1"],
  period: "P1D",
  async check({ config }) {
    const { tls, publicUrl, trustedProxies, host } = config;
    if (!tls) {
      // Plain HTTP is for development, and only while nothing beyond this machine can reach it.
      if (isLoopback(publicUrl.hostname) && isLoopback(host)) {
        return { ok: true, evidence: `plain HTTP on a loopback address (${publicUrl.host}): development only` };
      }
      if (publicUrl.protocol === "https:" && trustedProxies.length > 0) {
        return {
          ok: true,
          evidence: `TLS terminated by the trusted proxy (${trustedProxies.join(", ")}) in front of ${publicUrl.origin}`,
        };
      }
      return {
        ok: false,
        evidence: `${publicUrl.origin} is served without TLS on ${host}: set CHARTER_TLS_CERT and CHARTER_TLS_KEY, or terminate TLS at a proxy named in CHARTER_TRUSTED_PROXIES with an https PUBLIC_URL`,
      };
    }
    const cert = new X509Certificate(readFileSync(tls.certPath));
    const expires = new Date(cert.validTo);
    if (expires.getTime() < Date.now()) {
      return { ok: false, evidence: `the certificate ${tls.certPath} expired on ${expires.toISOString()}` };
    }
    const keyMode = statSync(tls.keyPath).mode & 0o777;
    if (keyMode & 0o077) {
      return {
        ok: false,
        evidence: `the TLS key ${tls.keyPath} is accessible to group or others (mode ${keyMode.toString(8)}): chmod 600`,
      };
    }
    return {
      ok: true,
      evidence: `HTTPS served directly, minimum ${tls.minVersion}, HSTS on; certificate for ${cert.subject.replaceAll("\n", ", ")} valid until ${expires.toISOString()}`,
    };
  },
};

/** The kernel's controls, given the application's inventory (modules add their tables to the platform's). */
export const kernelControls = (inventory: Inventory = PLATFORM_INVENTORY): Control[] => [
  runtimeRole,
  tenancyCatalog,
  dataInventory(inventory),
  migrations,
  masterKeyFile,
  masterKeyWraps,
  destructionJournal,
  tlsSettings,
];
