import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cliEnv, runCharter } from "../../../test/support/cli.ts";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";
import { loadConfig } from "../../config.ts";
import { systemClock } from "../clock.ts";
import { createKeyRing } from "../crypto/key-ring.ts";
import { loadMasterKey } from "../crypto/master-key.ts";
import { prepareDataDir } from "../data-dir.ts";
import { openConfiguredDatabase } from "../db/index.ts";
import { uuidv7 } from "../ids.ts";
import { setFeature } from "../tenancy/features.ts";
import { createTenant } from "../tenancy/tenants.ts";
import { createAudit } from "./audit.ts";
import { tenantChainId } from "./event.ts";

/**
 * `charter audit verify` and `charter audit export`, run as the CLI: events are recorded in-process with the
 * data directory's keys, then the CLI opens the database itself. The tamper is made as the superuser, which
 * this test can reach on PostgreSQL; the chain checks themselves are tested on both databases in verify.test.ts.
 */
interface Setup {
  root: string;
  env: NodeJS.ProcessEnv;
  postgres: TestDatabase | undefined;
  tenantId: string;
}

/** A data directory (and on PostgreSQL a database) with one tenant whose changes chain has four events. */
async function setUp(kind: TestDatabase["kind"]): Promise<Setup> {
  const root = mkdtempSync(join(tmpdir(), `charter-audit-${kind}-`));
  const postgres = kind === "postgres" ? await openTestDatabase("postgres") : undefined;
  const vars = {
    CHARTER_DATA_DIR: join(root, "data"),
    LOG_LEVEL: "warn",
    ...(postgres?.url ? { DATABASE_URL: postgres.url } : {}),
  };
  const cfg = loadConfig(vars);
  const paths = prepareDataDir(cfg.dataDir);
  const db = await openConfiguredDatabase(cfg);
  try {
    const masterKey = loadMasterKey(cfg.masterKey, paths, () => {});
    const keyRing = createKeyRing({ db, masterKey, clock: systemClock });
    const audit = createAudit({ db, keyRing, clock: systemClock });
    const tenant = await createTenant(db, systemClock, { slug: `audit-${kind}`, name: "Acme" }, keyRing, audit);
    const tenantId = tenant.id;
    await db.withTenant({ tenantId }, async (tx) => {
      for (const feature of ["reports", "ai.drafts", "exports"]) {
        await setFeature(tx, systemClock, { tenantId, feature, enabled: true, changedBy: uuidv7() }, audit);
      }
    });
    return { root, env: cliEnv(vars), postgres, tenantId };
  } finally {
    await db.close();
  }
}

async function tearDown(setup: Setup | undefined): Promise<void> {
  await setup?.postgres?.close();
  if (setup) rmSync(setup.root, { recursive: true, force: true });
}

describe.each(DATABASE_KINDS)("charter audit on %s", (kind) => {
  let root: string;
  let env: NodeJS.ProcessEnv;
  let tenantId: string;
  let setup: Setup | undefined;
  beforeAll(async () => {
    setup = await setUp(kind);
    ({ root, env, tenantId } = setup);
  });
  afterAll(() => tearDown(setup));

  it("verify exits 0 on clean chains, for all of them and for one tenant and stream", async () => {
    const all = await runCharter(["audit", "verify"], env);
    expect(all).toMatchObject({ code: 0, stderr: "" });
    expect(all.stdout).toMatch(/^audit verify: OK \(checked 1 chains, 4 events/);
    const one = await runCharter(["audit", "verify", "--tenant", tenantId, "--stream", "changes"], env);
    expect(one).toMatchObject({ code: 0, stderr: "" });
  }, 60_000);

  it("export writes the chain as JSON Lines, to standard output or a new file of mode 0600", async () => {
    const out = await runCharter(["audit", "export", "--tenant", tenantId, "--stream", "changes"], env);
    expect(out).toMatchObject({ code: 0, stderr: "" });
    const lines = out.stdout.trimEnd().split("\n");
    expect(lines.map((l) => JSON.parse(l).action)).toEqual([
      "tenant.created",
      "tenant.feature-changed",
      "tenant.feature-changed",
      "tenant.feature-changed",
    ]);
    const file = join(root, "export.jsonl");
    const toFile = await runCharter(
      ["audit", "export", "--tenant", tenantId, "--stream", "changes", "--out", file],
      env,
    );
    expect(toFile).toMatchObject({ code: 0, stderr: "" });
    expect(readFileSync(file, "utf8")).toBe(`${lines.join("\n")}\n`);
    expect(statSync(file).mode & 0o777).toBe(0o600);
  }, 60_000);

  it("checkpoint signs the heads; verify then checks the checkpoints and export carries their proofs", async () => {
    const checkpoint = await runCharter(["audit", "checkpoint"], env);
    expect(checkpoint.code).toBe(0);
    // This data directory has never been started: its first checkpoint creates the signing key, and says so.
    expect(checkpoint.stderr).toMatch(/^generated a new Ed25519 signing key/);
    const verified = await runCharter(["audit", "verify"], env);
    expect(verified).toMatchObject({ code: 0, stderr: "" });
    expect(verified.stdout).toMatch(/^audit verify: OK \(checked .*1 checkpoints/);
    const out = await runCharter(["audit", "export", "--tenant", tenantId, "--stream", "changes"], env);
    const last = JSON.parse(out.stdout.trimEnd().split("\n").at(-1) as string);
    expect(last.checkpoint).toMatchObject({ head: { chain: tenantChainId(tenantId, "changes"), seq: 4 } });

    // Without the key that signed them the checkpoints prove nothing, and verify says so.
    const publicKey = await runCharter(["audit", "public-key"], env);
    expect(publicKey).toMatchObject({ code: 0, stderr: "" });
    expect(publicKey.stdout).toMatch(/^-----BEGIN PUBLIC KEY-----\n[\s\S]+-----END PUBLIC KEY-----\n$/);
    const keyFile = join(root, "data", "keys", "signing.key");
    const key = readFileSync(keyFile);
    rmSync(keyFile);
    try {
      const unverifiable = await runCharter(["audit", "verify"], env);
      expect(unverifiable.code).toBe(1);
      expect(unverifiable.stderr).toMatch(/^FAIL {2}checkpoints {2}seq 0 {2}signing-key-missing: /);
    } finally {
      writeFileSync(keyFile, key, { mode: 0o600 });
    }
  }, 60_000);

  it("rotate-signing-key hands signing to a new key; public-key --history lists both; the chain still verifies", async () => {
    const first = (await runCharter(["audit", "public-key"], env)).stdout;
    const extra = await runCharter(["audit", "rotate-signing-key", "now"], env);
    expect(extra.code).not.toBe(0);
    expect(extra.stderr).toMatch(/too many arguments/);
    const rotated = await runCharter(["audit", "rotate-signing-key"], env);
    expect(rotated).toMatchObject({ code: 0, stderr: "" });
    const newKeyId =
      /^rotated the signing key: key ([0-9a-f]{16}) signs from record 2 of the checkpoint chain on, and the destruction journal; key [0-9a-f]{16} is retired/.exec(
        rotated.stdout,
      )?.[1];
    expect(newKeyId).toBeDefined();
    const current = (await runCharter(["audit", "public-key"], env)).stdout;
    expect(current).toMatch(/^-----BEGIN PUBLIC KEY-----\n/);
    expect(current).not.toBe(first);
    const history = await runCharter(["audit", "public-key", "--history"], env);
    expect(history).toMatchObject({ code: 0, stderr: "" });
    const retired = history.stdout.split("\n")[0];
    expect(retired).toMatch(
      new RegExp(`^key [0-9a-f]{16}: retired at \\S+ by record 2 of the checkpoint chain, succeeded by ${newKeyId}$`),
    );
    expect(history.stdout).toBe(`${retired}\n${first}key ${newKeyId}: current\n${current}`);
    expect((await runCharter(["audit", "checkpoint"], env)).code).toBe(0);
    const verified = await runCharter(["audit", "verify"], env);
    expect(verified).toMatchObject({ code: 0, stderr: "" });
    expect(verified.stdout).toMatch(/checked .*3 checkpoints/);
  }, 180_000);

  it("refuses an unknown stream with one line and no stack trace", async () => {
    const result = await runCharter(["audit", "verify", "--stream", "everything"], env);
    expect(result.code).not.toBe(0);
    expect(result.stderr.trim()).toBe('charter: --stream must be one of changes, security, access, got "everything"');
  }, 60_000);
});

describe.each(DATABASE_KINDS.filter((k) => k === "postgres"))("charter audit after a tamper on %s", (kind) => {
  let env: NodeJS.ProcessEnv;
  let tenantId: string;
  let setup: Setup | undefined;
  beforeAll(async () => {
    setup = await setUp(kind);
    ({ env, tenantId } = setup);
  });
  afterAll(() => tearDown(setup));

  it("verify exits non-zero after a tamper, naming the chain, sequence and kind", async () => {
    await setup?.postgres?.superuser(
      `UPDATE audit_events SET details = details || '{"enabled": false}' WHERE tenant_id = '${tenantId}' AND seq = 3`,
    );
    const result = await runCharter(["audit", "verify"], env);
    expect(result.code).toBe(1);
    expect(result.stdout).toBe("");
    expect(result.stderr).toMatch(
      new RegExp(`^FAIL  ${tenantChainId(tenantId, "changes")}  seq 3  edited: .+\\naudit verify: 1 failed \\(checked`),
    );
  }, 60_000);
});
