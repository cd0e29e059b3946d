import { type Selectable, sql } from "kysely";
import { blindIndex, normaliseEmail } from "../../platform/crypto/blind-index.ts";
import type { Binding } from "../../platform/crypto/envelope.ts";
import type { KeyRing } from "../../platform/crypto/key-ring.ts";
import type { Tx } from "../../platform/db/index.ts";
import { uuidv7 } from "../../platform/ids.ts";
import type { UsersTable } from "./schema.ts";

/**
 * The rows of global user accounts: an address is stored sealed under the user's person key (erasing the
 * person shreds it) and found through its keyed blind index (platform scope), never in clear.
 */

export type UserRow = Selectable<UsersTable>;

/** An address in normal form and its blind index: what every lookup and every stored copy is keyed by. */
export interface IndexedEmail {
  normalised: string;
  index: Buffer;
}

/**
 * Normalises an address and computes its platform blind index. Throws NormalisationError (blind-index.ts)
 * for something that is not an address; callers validate input first so this is a programming error there.
 */
export function emailIndexOf(keyRing: KeyRing, email: string): IndexedEmail {
  const normalised = normaliseEmail(email);
  return { normalised, index: blindIndex(keyRing.blindIndexKey("platform"), "email", normalised) };
}

/** The account's rate-limit key: the same for an address with or without an account (no enumeration). */
export function emailRateKey(indexed: IndexedEmail): { kind: "account"; id: string } {
  return { kind: "account", id: indexed.index.toString("hex") };
}

/**
 * Serialises, for the rest of the transaction, every change that gives an address a verified owner: after
 * it, a check that no other verified account holds the address stays true until commit, so the
 * users_verified_email unique index is never the one to refuse (as a raw error) a second claim.
 */
export async function lockEmail(tx: Tx, index: Uint8Array): Promise<void> {
  const name = `users/email/${Buffer.from(index).toString("hex")}`;
  await sql`SELECT pg_advisory_xact_lock(hashtextextended(${name}, 0))`.execute(tx);
}

function emailBinding(table: "users" | "account_tokens", rowId: string): Binding {
  return { tenantId: null, table, column: "email", rowId };
}

/** Seals an address for `table`.email of `rowId`, under the person key of `userId`. */
export function sealEmail(
  tx: Tx,
  keyRing: KeyRing,
  userId: string,
  table: "users" | "account_tokens",
  rowId: string,
  normalised: string,
): Promise<string> {
  return keyRing.encrypt(tx, { scope: "person", personId: userId }, normalised, emailBinding(table, rowId));
}

/** Opens an address sealed by sealEmail. */
export function openEmail(
  tx: Tx,
  keyRing: KeyRing,
  table: "users" | "account_tokens",
  rowId: string,
  envelope: string,
): Promise<string> {
  return keyRing.decrypt(tx, envelope, emailBinding(table, rowId));
}

/** The user's own address, in clear (for mail to them and for their profile). */
export function userEmail(tx: Tx, keyRing: KeyRing, user: Pick<UserRow, "id" | "email">): Promise<string> {
  return openEmail(tx, keyRing, "users", user.id, user.email);
}

export interface NewUser {
  email: IndexedEmail;
  displayName: string;
  /** Argon2id PHC string (passwords.ts), or null for an account without a password. */
  passwordHash: string | null;
  /** Set for an account whose address is already proven (e.g. the operator created from the setup link). */
  verifiedAt?: Date;
}

/**
 * Inserts a user. A verified address already held by another verified account fails on the
 * users_verified_email unique index; unverified accounts may share an address.
 */
export async function createUser(tx: Tx, keyRing: KeyRing, now: Date, input: NewUser): Promise<UserRow> {
  const id = uuidv7(now.getTime());
  const sealed = await sealEmail(tx, keyRing, id, "users", id, input.email.normalised);
  return tx
    .insertInto("users")
    .values({
      id,
      email: sealed,
      email_index: input.email.index,
      email_verified_at: input.verifiedAt ?? null,
      display_name: input.displayName,
      password_hash: input.passwordHash,
      password_changed_at: input.passwordHash === null ? null : now,
      created_at: now,
      updated_at: now,
    })
    .returningAll()
    .executeTakeFirstOrThrow();
}

/**
 * Locks the user's row for the transaction. Taken first by every change to the user's second factors (a removal,
 * a factor reset) and to their pending factor reset (a request, a cancel, the sweep): those are serialised per
 * user, and always lock in one order.
 */
export async function lockUser(tx: Tx, userId: string): Promise<void> {
  await tx.selectFrom("users").select("id").where("id", "=", userId).forUpdate().execute();
}

export async function findUserById(tx: Tx, userId: string): Promise<UserRow | undefined> {
  return tx.selectFrom("users").selectAll().where("id", "=", userId).executeTakeFirst();
}

/** The one verified account holding an address, if any. */
export async function findVerifiedUserByEmail(tx: Tx, index: Buffer): Promise<UserRow | undefined> {
  return tx
    .selectFrom("users")
    .selectAll()
    .where("email_index", "=", index)
    .where("email_verified_at", "is not", null)
    .executeTakeFirst();
}
