import { type Options as Argon2Options, hash, verify } from "@node-rs/argon2";
import type { ZxcvbnFactory } from "@zxcvbn-ts/core";
import { HttpProblem } from "../../platform/http/problem.ts";

/**
 * Passwords (promise A1): Argon2id with OWASP's parameters, and a strength check against an offline list of
 * common and breached passwords and the words of the account's own context (its email, name, the product).
 * A password is never logged, stored or returned; only its PHC-format hash is kept.
 */

/** Argon2id (`Algorithm.Argon2id` is a const enum, which erasable TypeScript cannot import). */
const ARGON2ID = 2;

/** OWASP Password Storage Cheat Sheet: m = 19 MiB, t = 2, p = 1. */
export const ARGON2_PARAMETERS = { memoryCost: 19_456, timeCost: 2, parallelism: 1 } as const;

export const MIN_PASSWORD_LENGTH = 12;
export const MAX_PASSWORD_LENGTH = 256;
/** zxcvbn's score (0-4) a password must reach: 3 is "safely unguessable" (about 10^8 guesses offline). */
const MIN_SCORE = 3;

export interface PasswordHasher {
  hash(password: string): Promise<string>;
  /** Whether the password matches; false (never an error) for a malformed or foreign hash. */
  verify(passwordHash: string, password: string): Promise<boolean>;
  /**
   * Spends the time of one verification against a hash of nothing, for an account that does not exist or
   * has no password, so the answer takes as long as for one that does (no enumeration by timing).
   */
  verifyNothing(password: string): Promise<void>;
}

/**
 * The hasher. `parameters` exists for tests only, which may use cheaper ones to run fast; production uses
 * ARGON2_PARAMETERS.
 */
export function createPasswordHasher(parameters: Argon2Options = ARGON2_PARAMETERS): PasswordHasher {
  const options: Argon2Options = { ...parameters, algorithm: ARGON2ID };
  let dummy: Promise<string> | undefined;
  const check = async (passwordHash: string, password: string) => {
    try {
      return await verify(passwordHash, password);
    } catch {
      return false;
    }
  };
  return {
    hash: (password) => hash(password, options),
    verify: check,
    async verifyNothing(password) {
      dummy ??= hash("no account has this password", options);
      await check(await dummy, password);
    },
  };
}

/**
 * The estimator and its dictionaries (a second to load) are loaded on the first check, not when the module
 * is imported: every CLI command imports the server, and few of them check a password.
 */
let estimator: Promise<ZxcvbnFactory> | undefined;
function loadEstimator(): Promise<ZxcvbnFactory> {
  estimator ??= (async () => {
    const [{ ZxcvbnFactory }, common, english] = await Promise.all([
      import("@zxcvbn-ts/core"),
      import("@zxcvbn-ts/language-common"),
      import("@zxcvbn-ts/language-en"),
    ]);
    return new ZxcvbnFactory({
      translations: english.translations,
      graphs: common.adjacencyGraphs,
      dictionary: { ...common.dictionary, ...english.dictionary },
    });
  })();
  return estimator;
}

export interface PasswordContext {
  email?: string;
  displayName?: string;
}

export type StrengthVerdict = { ok: true } | { ok: false; reason: string };

/** Words a guesser would try first for this account: the product's name and the account's own details. */
function contextWords(context: PasswordContext): string[] {
  const words = ["charter", "crm", "password"];
  if (context.email) {
    const [local = "", domain = ""] = context.email.toLowerCase().split("@");
    words.push(local, ...local.split(/[._+-]/), ...domain.split("."));
  }
  if (context.displayName) words.push(...context.displayName.toLowerCase().split(/\s+/));
  return words.filter((word) => word.length >= 3);
}

/** Whether a new password is acceptable; the reason is shown to the user and never contains the password. */
export async function checkPasswordStrength(password: string, context: PasswordContext = {}): Promise<StrengthVerdict> {
  if (typeof password !== "string") return { ok: false, reason: "a password is required" };
  const length = [...password].length;
  if (length < MIN_PASSWORD_LENGTH) {
    return { ok: false, reason: `use at least ${MIN_PASSWORD_LENGTH} characters` };
  }
  if (length > MAX_PASSWORD_LENGTH) {
    return { ok: false, reason: `use at most ${MAX_PASSWORD_LENGTH} characters` };
  }
  const result = (await loadEstimator()).check(password, contextWords(context));
  if (result.score >= MIN_SCORE) return { ok: true };
  const hint = result.feedback.warning ?? result.feedback.suggestions[0];
  return {
    ok: false,
    reason: `this password is too easy to guess${hint ? `: ${hint}` : ""}`,
  };
}

/** Refuses a new password that is too weak (HttpProblem "weak-password" with the reason); nothing is written. */
export async function assertStrongPassword(password: string, context: PasswordContext): Promise<void> {
  const verdict = await checkPasswordStrength(password, context);
  if (!verdict.ok) throw new HttpProblem("weak-password", verdict.reason);
}
