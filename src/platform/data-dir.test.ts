import { chmodSync, mkdirSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { DataDirError, prepareDataDir } from "./data-dir.ts";

let parent: string;

beforeEach(() => {
  parent = mkdtempSync(join(tmpdir(), "charter-data-"));
});

afterEach(() => {
  rmSync(parent, { recursive: true, force: true });
});

describe("prepareDataDir", () => {
  it("creates the layout with mode 0700 and leaves db/ to PGlite", () => {
    const root = join(parent, "data");
    const paths = prepareDataDir(root);

    expect(paths).toEqual({
      root,
      db: join(root, "db"),
      keys: join(root, "keys"),
      checkpoints: join(root, "checkpoints"),
      journal: join(root, "journal"),
      files: join(root, "files"),
      run: join(root, "run"),
    });
    for (const dir of [paths.root, paths.keys, paths.checkpoints, paths.journal, paths.files, paths.run]) {
      expect(statSync(dir).mode & 0o777).toBe(0o700);
    }
    expect(() => statSync(paths.db)).toThrow();
  });

  it("accepts an existing layout", () => {
    const root = join(parent, "data");
    expect(prepareDataDir(root)).toEqual(prepareDataDir(root));
  });

  for (const name of ["keys", "run", "files"]) {
    it(`refuses a group-writable ${name}/ without changing it`, () => {
      const root = join(parent, "data");
      mkdirSync(join(root, name), { recursive: true });
      chmodSync(join(root, name), 0o770);

      expect(() => prepareDataDir(root)).toThrow(DataDirError);
      expect(() => prepareDataDir(root)).toThrow(join(root, name));
      expect(statSync(join(root, name)).mode & 0o777).toBe(0o770);
    });
  }
});
