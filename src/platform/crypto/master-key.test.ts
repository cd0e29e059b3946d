import { createHash, randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { inspect } from "node:util";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { MasterKeySource } from "../../config.ts";
import { type DataDirPaths, prepareDataDir } from "../data-dir.ts";
import { keyFileCheck, loadMasterKey, MasterKey, MasterKeyError } from "./master-key.ts";

let paths: DataDirPaths;

beforeEach(() => {
  paths = prepareDataDir(join(mkdtempSync(join(tmpdir(), "charter-key-")), "data"));
});

afterEach(() => {
  rmSync(join(paths.root, ".."), { recursive: true, force: true });
});

function keyFile(
  content: string | Buffer,
  mode = 0o600,
  path = join(paths.root, "..", "master.key"),
): MasterKeySource & { kind: "file" } {
  writeFileSync(path, content);
  chmodSync(path, mode);
  return { kind: "file", path };
}

function generated(): MasterKeySource {
  return { kind: "generated", path: join(paths.keys, "master.key") };
}

function loadError(source: MasterKeySource): MasterKeyError {
  try {
    loadMasterKey(source, paths, () => {});
  } catch (error) {
    expect(error).toBeInstanceOf(MasterKeyError);
    expect((error as Error).message).not.toContain("\n");
    return error as MasterKeyError;
  }
  throw new Error("expected loadMasterKey to throw");
}

describe("generated master key", () => {
  it("is written once with mode 0600 and a warning, then loaded again silently", () => {
    const log = vi.fn();
    const source = generated();
    const first = loadMasterKey(source, paths, log);

    expect(statSync(join(paths.keys, "master.key")).mode & 0o777).toBe(0o600);
    expect(log).toHaveBeenCalledTimes(1);
    const warning = String(log.mock.calls[0]?.[0]);
    expect(warning).toMatch(/WARNING.*generated.*CHARTER_MASTER_KEY_FILE.*CHARTER_MASTER_KEY/);
    expect(warning).not.toContain(first.bytes().toString("base64"));
    expect(warning).not.toContain(first.bytes().toString("hex"));

    const again = vi.fn();
    const second = loadMasterKey(source, paths, again);
    expect(second.bytes().equals(first.bytes())).toBe(true);
    expect(again).not.toHaveBeenCalled();
  });

  it("is held to the same mode rules as a configured file", () => {
    loadMasterKey(generated(), paths, () => {});
    chmodSync(join(paths.keys, "master.key"), 0o644);
    expect(loadError(generated()).message).toContain(join(paths.keys, "master.key"));
  });
});

describe("key file", () => {
  it("accepts 32 raw bytes, base64 and hex with a trailing newline", () => {
    const bytes = randomBytes(32);
    for (const content of [bytes, `${bytes.toString("base64")}\n`, `${bytes.toString("hex")}\n`]) {
      expect(loadMasterKey(keyFile(content), paths).bytes().equals(bytes)).toBe(true);
    }
  });

  it("refuses a world-readable file, naming the file, its mode and the fix", () => {
    const source = keyFile(randomBytes(32).toString("base64"), 0o644);
    const { message } = loadError(source);
    expect(message).toContain(source.path);
    expect(message).toContain("0644");
    expect(message).toContain("chmod 600");
  });

  it("refuses a group-readable file", () => {
    expect(loadError(keyFile(randomBytes(32).toString("base64"), 0o640)).message).toContain("0640");
  });

  it("refuses content that is not a 32-byte key, naming CHARTER_MASTER_KEY_FILE", () => {
    for (const content of [randomBytes(31), randomBytes(33), randomBytes(31).toString("base64"), "not a key\n"]) {
      expect(loadError(keyFile(content)).message).toContain("CHARTER_MASTER_KEY_FILE");
    }
  });

  it("refuses a missing file without generating one", () => {
    const path = join(paths.root, "..", "absent.key");
    expect(loadError({ kind: "file", path }).message).toContain(path);
    expect(existsSync(path)).toBe(false);
  });

  it("refuses a key file inside the database directory", () => {
    mkdirSync(paths.db);
    const source = keyFile(randomBytes(32).toString("base64"), 0o600, join(paths.db, "master.key"));
    expect(loadError(source).message).toContain(paths.db);
  });

  it("refuses a key file that reaches the database directory through a symlink", () => {
    mkdirSync(paths.db);
    const link = join(paths.root, "..", "elsewhere");
    symlinkSync(paths.db, link);
    expect(loadError(keyFile(randomBytes(32).toString("base64"), 0o600, join(link, "master.key"))).message).toContain(
      "database directory",
    );
  });
});

describe("CHARTER_MASTER_KEY", () => {
  it("accepts base64 and hex of the same key", () => {
    const bytes = randomBytes(32);
    for (const value of [bytes.toString("base64"), bytes.toString("hex")]) {
      expect(loadMasterKey({ kind: "env", value }, paths).bytes().equals(bytes)).toBe(true);
    }
  });

  it("refuses a value that does not decode to 32 bytes", () => {
    for (const value of [randomBytes(16).toString("base64"), randomBytes(33).toString("hex"), "secret"]) {
      expect(loadError({ kind: "env", value }).message).toContain("CHARTER_MASTER_KEY");
    }
  });
});

describe("MasterKey", () => {
  const bytes = randomBytes(32);
  const key = new MasterKey(bytes);
  const secrets = [bytes.toString("base64"), bytes.toString("hex")];

  it("never shows the key through JSON, inspect or string conversion", () => {
    for (const shown of [
      JSON.stringify({ key }),
      inspect(key),
      inspect({ key }, { depth: 5 }),
      `${key}`,
      String(key),
    ]) {
      for (const secret of secrets) expect(shown).not.toContain(secret);
    }
  });

  it("hands out copies of the bytes", () => {
    key.bytes().fill(0);
    expect(key.bytes().equals(bytes)).toBe(true);
  });

  it("has a fingerprint of the first 8 bytes of its SHA-256", () => {
    expect(key.fingerprint).toBe(createHash("sha256").update(bytes).digest("hex").slice(0, 16));
  });
});

describe("keyFileCheck", () => {
  it("passes on a 0600 key file outside the database and fails once it is world-readable", () => {
    const source = keyFile(randomBytes(32).toString("base64"));
    const good = keyFileCheck(source, paths);
    expect(good.ok).toBe(true);
    expect(good.evidence).toContain("0600");

    chmodSync(source.path, 0o644);
    const bad = keyFileCheck(source, paths);
    expect(bad.ok).toBe(false);
    expect(bad.evidence).toContain("0644");
  });

  it("never includes the key and names the environment source", () => {
    const bytes = randomBytes(32);
    const check = keyFileCheck({ kind: "env", value: bytes.toString("base64") }, paths);
    expect(check.ok).toBe(true);
    expect(check.evidence).toContain("CHARTER_MASTER_KEY");
    expect(check.evidence).not.toContain(bytes.toString("base64"));
  });

  it("fails on a key file inside the database directory or missing", () => {
    mkdirSync(paths.db);
    expect(keyFileCheck(keyFile(randomBytes(32), 0o600, join(paths.db, "master.key")), paths).ok).toBe(false);
    expect(keyFileCheck(generated(), paths)).toMatchObject({
      ok: false,
      evidence: expect.stringContaining("does not exist"),
    });
  });
});
