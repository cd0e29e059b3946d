import { type Dirent, readdirSync, readFileSync } from "node:fs";
import { join, relative, sep } from "node:path";

/**
 * The layering rules of promises T1 and T4, checked over source text as a backstop to the lint rules:
 * only src/platform/db imports a database driver, and only its own files hold role statements.
 */

/** Driver packages, with any subpath (`pg/lib/client`, `@electric-sql/pglite/worker`). */
export const DRIVER_IMPORT = /^(?:pg|pg-pool|postgres|@electric-sql\/pglite)(?:\/.*)?$/;

/** The regex of lint/no-role-statements.grit, without its `(?is).*` … `.*` wrapping; flags `is` as there. */
export const ROLE_STATEMENT = /(?:set\s+(?:local\s+|session\s+)?role|reset\s+role|set_config\s*\(\s*.role.)/is;

const DB_LAYER = "src/platform/db/";

interface Token {
  kind: "word" | "string" | "template" | "punct";
  text: string;
}

const WORD_START = /[A-Za-z_$]/;
const WORD = /[\w$]/;
// After these a `/` starts a regular expression rather than a division.
const BEFORE_REGEX = new Set([
  "return",
  "typeof",
  "case",
  "do",
  "else",
  "in",
  "of",
  "new",
  "delete",
  "void",
  "throw",
  "yield",
  "await",
  "instanceof",
]);

/** Splits TypeScript source into words, punctuation, and string and template literals (comments dropped). */
export function tokenize(source: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;

  const quoted = (quote: string): string => {
    const start = i++;
    while (i < source.length && source[i] !== quote && source[i] !== "\n") i += source[i] === "\\" ? 2 : 1;
    i++;
    return source.slice(start + 1, i - 1);
  };

  // Reads a template literal from its backtick, tokenizing the code inside `${…}` too.
  const template = (): string => {
    const start = i++;
    while (i < source.length && source[i] !== "`") {
      if (source[i] === "\\") i += 2;
      else if (source[i] === "$" && source[i + 1] === "{") {
        i += 2;
        scan("}");
        i++;
      } else i++;
    }
    i++;
    return source.slice(start, i);
  };

  const regexAllowed = (): boolean => {
    const last = tokens.at(-1);
    if (!last) return true;
    if (last.kind === "word") return BEFORE_REGEX.has(last.text);
    if (last.kind === "punct") return !/[)\]}]/.test(last.text);
    return false;
  };

  const skipRegex = (): void => {
    let inClass = false;
    i++;
    while (i < source.length && source[i] !== "\n") {
      const c = source[i];
      if (c === "\\") i++;
      else if (c === "[") inClass = true;
      else if (c === "]") inClass = false;
      else if (c === "/" && !inClass) break;
      i++;
    }
    i++;
    while (i < source.length && WORD.test(source[i] as string)) i++;
  };

  // Scans until the unmatched `close` brace (inside a template expression) or the end of the source.
  function scan(close?: string): void {
    let depth = 0;
    while (i < source.length) {
      const c = source[i] as string;
      if (close && c === close && depth === 0) return;
      if (/\s/.test(c)) i++;
      else if (c === "/" && source[i + 1] === "/") {
        while (i < source.length && source[i] !== "\n") i++;
      } else if (c === "/" && source[i + 1] === "*") {
        const end = source.indexOf("*/", i + 2);
        i = end === -1 ? source.length : end + 2;
      } else if (c === '"' || c === "'") tokens.push({ kind: "string", text: quoted(c) });
      else if (c === "`") tokens.push({ kind: "template", text: template() });
      else if (c === "/" && regexAllowed()) {
        skipRegex();
        tokens.push({ kind: "punct", text: "regex" });
      } else if (WORD_START.test(c)) {
        const start = i;
        while (i < source.length && WORD.test(source[i] as string)) i++;
        tokens.push({ kind: "word", text: source.slice(start, i) });
      } else {
        if (c === "{") depth++;
        if (c === "}") depth--;
        tokens.push({ kind: "punct", text: c });
        i++;
      }
    }
  }

  scan();
  return tokens;
}

/** Module specifiers a file imports or re-exports: static, side-effect, dynamic and `require`. */
export function importedModules(tokens: Token[]): string[] {
  const modules: string[] = [];
  tokens.forEach((token, n) => {
    const next = tokens[n + 1];
    const after = tokens[n + 2];
    if (token.kind !== "word") return;
    if ((token.text === "from" || token.text === "import") && next?.kind === "string") modules.push(next.text);
    if ((token.text === "import" || token.text === "require") && next?.text === "(" && after?.kind === "string") {
      modules.push(after.text);
    }
  });
  return modules;
}

/** What is wrong with one file, given its path relative to the repository (with `/` separators). */
export function layeringViolations(path: string, source: string): string[] {
  const violations: string[] = [];
  const tokens = tokenize(source);
  if (!path.startsWith(DB_LAYER)) {
    for (const module of importedModules(tokens)) {
      if (DRIVER_IMPORT.test(module)) violations.push(`${path} imports the database driver "${module}"`);
    }
  }
  if (!path.startsWith(DB_LAYER)) {
    for (const token of tokens) {
      if ((token.kind === "string" || token.kind === "template") && ROLE_STATEMENT.test(token.text)) {
        violations.push(`${path} holds a role statement: ${JSON.stringify(token.text.slice(0, 80))}`);
      }
    }
  }
  return violations;
}

/** Every TypeScript file under `dirs` of `root`, as repository paths with `/` separators. */
export function sourceFiles(root: string, dirs: string[] = ["src", "test", "bench"]): string[] {
  const files: string[] = [];
  const walk = (dir: string) => {
    let entries: Dirent[];
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return;
      throw error;
    }
    for (const entry of entries) {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) {
        if (entry.name !== "node_modules") walk(path);
      } else if (/\.[cm]?ts$/.test(entry.name)) {
        files.push(relative(root, path).split(sep).join("/"));
      }
    }
  };
  for (const dir of dirs) walk(join(root, dir));
  return files.sort();
}

/** The layering violations of every TypeScript file under src/, test/ and bench/. */
export function scanRepository(root: string): string[] {
  return sourceFiles(root).flatMap((path) => layeringViolations(path, readFileSync(join(root, path), "utf8")));
}
