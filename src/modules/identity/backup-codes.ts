import { randomBytes } from "node:crypto";
import type { Tx } from "../../platform/db/index.ts";
import { uuidv7 } from "../../platform/ids.ts";
import type { IdentityDeps } from "./deps.ts";
import type { PasswordHasher } from "./passwords.ts";

/**
 * Backup codes (promise A2): ten single-use codes issued with the authenticator app, for the day it is lost.
 * Each is 16 characters of Crockford's base32 (80 random bits), shown once and stored as an Argon2id hash;
 * its first four characters are kept in clear as a prefix that finds the one hash a guess is checked
 * against, so a guess costs one Argon2id verification, not ten.
 */

export const BACKUP_CODE_COUNT = 10;
/** Crockford's base32: no i, l, o or u, so a code read aloud or typed from paper is not misread. */
const ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz";
const CODE_LENGTH = 16;
const PREFIX_LENGTH = 4;
const GROUP = 4;
const NORMAL_CODE = /^[0-9a-hjkmnp-tv-z]{16}$/;

/** Whatever identifies a backup code from its text: upper case, spaces, dashes and look-alikes allowed. */
export function normaliseBackupCode(input: string): string | null {
  const code = input.toLowerCase().replace(/[\s-]/g, "").replace(/[il]/g, "1").replace(/o/g, "0");
  return NORMAL_CODE.test(code) ? code : null;
}

/** A new code in normal form: each character takes 5 of a random byte's bits, so none is likelier. */
function newCode(): string {
  return [...randomBytes(CODE_LENGTH)].map((byte) => ALPHABET[byte & 31]).join("");
}

/** As the user is shown it: four groups of four. */
export function formatBackupCode(code: string): string {
  return (code.match(new RegExp(`.{1,${GROUP}}`, "g")) ?? []).join("-");
}

export interface HashedBackupCode {
  prefix: string;
  hash: string;
}

/**
 * Ten new codes (formatted, to show the user once) and their hashes. Hashed before any transaction opens:
 * ten Argon2id hashes take a while, and no transaction should wait on them. Prefixes are distinct within a
 * set, as the unique index of (user, prefix) requires.
 */
export async function newBackupCodes(
  passwords: PasswordHasher,
): Promise<{ codes: string[]; hashed: HashedBackupCode[] }> {
  const codes = new Map<string, string>();
  while (codes.size < BACKUP_CODE_COUNT) {
    const code = newCode();
    const prefix = code.slice(0, PREFIX_LENGTH);
    if (!codes.has(prefix)) codes.set(prefix, code);
  }
  const hashed = await Promise.all(
    [...codes].map(async ([prefix, code]) => ({ prefix, hash: await passwords.hash(code) })),
  );
  return { codes: [...codes.values()].map(formatBackupCode), hashed };
}

/** Replaces the user's backup codes, used or not, with `hashed`. */
export async function storeBackupCodes(tx: Tx, userId: string, hashed: HashedBackupCode[], now: Date): Promise<void> {
  await deleteBackupCodes(tx, userId);
  await tx
    .insertInto("backup_codes")
    .values(
      hashed.map(({ prefix, hash }) => ({
        id: uuidv7(now.getTime()),
        user_id: userId,
        prefix,
        code_hash: hash,
        created_at: now,
      })),
    )
    .execute();
}

/** Deletes every backup code of the user; returns how many there were. */
export async function deleteBackupCodes(tx: Tx, userId: string): Promise<number> {
  const result = await tx.deleteFrom("backup_codes").where("user_id", "=", userId).executeTakeFirst();
  return Number(result.numDeletedRows);
}

/**
 * The id of the unused backup code of the user that `input` is, or null. The hash is checked outside any
 * transaction; the caller then spends the code with claimBackupCode in the transaction that acts on it. A
 * malformed code, or one whose prefix matches nothing, still costs one Argon2id verification, like a wrong one.
 */
export async function checkBackupCode(
  deps: Pick<IdentityDeps, "db" | "passwords">,
  userId: string,
  input: string,
): Promise<string | null> {
  const code = normaliseBackupCode(input);
  const candidate =
    code === null
      ? undefined
      : await deps.db.withPlatform((tx) =>
          tx
            .selectFrom("backup_codes")
            .select(["id", "code_hash"])
            .where("user_id", "=", userId)
            .where("prefix", "=", code.slice(0, PREFIX_LENGTH))
            .where("used_at", "is", null)
            .executeTakeFirst(),
        );
  if (code === null || candidate === undefined) {
    await deps.passwords.verifyNothing(input);
    return null;
  }
  return (await deps.passwords.verify(candidate.code_hash, code)) ? candidate.id : null;
}

/** Spends a backup code: true for exactly one of any number of requests racing with it. */
export async function claimBackupCode(tx: Tx, userId: string, codeId: string, now: Date): Promise<boolean> {
  const result = await tx
    .updateTable("backup_codes")
    .set({ used_at: now })
    .where("id", "=", codeId)
    .where("user_id", "=", userId)
    .where("used_at", "is", null)
    .executeTakeFirst();
  return Number(result.numUpdatedRows) === 1;
}

/** How many unused backup codes the user has left. */
export async function remainingBackupCodes(tx: Tx, userId: string): Promise<number> {
  const row = await tx
    .selectFrom("backup_codes")
    .select((eb) => eb.fn.countAll<string>().as("count"))
    .where("user_id", "=", userId)
    .where("used_at", "is", null)
    .executeTakeFirstOrThrow();
  return Number(row.count);
}
