import { createHash, timingSafeEqual } from "node:crypto";
import type { Selectable } from "kysely";
import type { Clock } from "../clock.ts";
import type { Binding } from "../crypto/envelope.ts";
import type { KeyOwner, KeyRing } from "../crypto/key-ring.ts";
import { newDataKey } from "../crypto/wrap.ts";
import type { Tx } from "../db/index.ts";
import { isUuid, uuidv7 } from "../ids.ts";
import { type BlobStore, newBlobKey } from "./blob-store.ts";
import { decryptContent, encryptContent } from "./cipher.ts";
import { FILE_KINDS, type FileKind, isFileKind } from "./kinds.ts";
import type { PlatformFilesTable, TenantFilesTable } from "./schema.ts";

/**
 * The file store (promise E2): files owned by a tenant, one of its CRM subjects, a person or the platform,
 * each encrypted under a random content key of its own that is stored encrypted under its owner's key.
 * Destroying the owner's key (erasure, tenant deletion) leaves every copy of the file unreadable, backups
 * of the blob store included.
 *
 * The content is written to the blob store first and the metadata row second, in the caller's
 * transaction: a blob whose row never committed is an orphan, which `sweepOrphanBlobs` removes once it
 * is old enough that no transaction could still be about to commit its row. Writing the row first would
 * need a transaction of the store's own beside the caller's, which the database layer forbids.
 */

/** Whose a file is; tenant and subject files need the tenant's transaction. */
export type FileOwner = KeyOwner;

export interface FileRef {
  owner: FileOwner;
  id: string;
}

export interface NewFile {
  kind: FileKind;
  /** type/subtype, without parameters; stored in lowercase. */
  mediaType: string;
  /** The name to offer on download; encrypted, since names of files often name people. */
  name?: string;
  /** undefined: the kind's default (FILE_KINDS); null: never (refused for kinds that always expire). */
  expiresAt?: Date | null;
}

export interface FileInfo {
  id: string;
  owner: FileOwner;
  kind: FileKind;
  mediaType: string;
  name: string | null;
  size: number;
  createdAt: Date;
  expiresAt: Date | null;
}

export interface OpenedFile {
  file: FileInfo;
  /**
   * The plaintext, read from the blob store as it is consumed, each chunk only once it authenticated; it
   * needs no transaction, so read it after the transaction ends. Single use. Throws DecryptionError or
   * FileIntegrityError if the stored content was altered: treat the whole file as failed then.
   */
  content: AsyncIterable<Buffer>;
}

export type FileContent = Buffer | AsyncIterable<Uint8Array>;

/**
 * Content already encrypted into the blob store, waiting for its row: lets a route stream an upload to
 * storage before it opens its transaction. Used by one `put`; never stored, it becomes an orphan blob.
 */
export interface StagedFile {
  readonly id: string;
  readonly size: number;
}

export class FileNotFoundError extends Error {
  override name = "FileNotFoundError";
  constructor() {
    super("no such file");
  }
}

/** The stored content is missing or not what was stored, though every chunk may authenticate. */
export class FileIntegrityError extends Error {
  override name = "FileIntegrityError";
}

export interface FileStore {
  /** The largest content accepted, in bytes. */
  readonly maxBytes: number;
  /** Encrypts content into the blob store outside any transaction. Throws FileTooLargeError past the limit. */
  stage(content: FileContent): Promise<StagedFile>;
  /**
   * Stores a file for `owner` in `tx` (for tenant and subject owners, the tenant's transaction). Bad input
   * is refused with a TypeError, and content over the limit with FileTooLargeError, before anything is
   * written.
   */
  put(tx: Tx, owner: FileOwner, file: NewFile, content: FileContent | StagedFile): Promise<FileInfo>;
  /** The file's metadata and a stream of its content. Throws FileNotFoundError for a deleted or another owner's file. */
  open(tx: Tx, ref: FileRef): Promise<OpenedFile>;
  /** As open, with the whole content in memory. */
  read(tx: Tx, ref: FileRef): Promise<{ file: FileInfo; content: Buffer }>;
  /**
   * Deletes a file: it can no longer be opened, and the expiry sweep removes its row and blob unless a
   * legal hold covers it. False when there was no such file.
   */
  delete(tx: Tx, ref: FileRef): Promise<boolean>;
}

export interface FileStoreOptions {
  keyRing: KeyRing;
  clock: Clock;
  blobs: BlobStore;
  /** Default 100 MiB. */
  maxBytes?: number;
}

export const DEFAULT_MAX_FILE_BYTES = 100 * 1024 * 1024;

const MEDIA_TYPE = /^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}\/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$/;
const MAX_NAME_LENGTH = 255;

/** Where a file's row lives, from its owner. */
type Place =
  | { table: "tenant_files"; tenantId: string; subjectId: string | null }
  | { table: "platform_files"; personId: string | null };

function checkUuid(name: string, value: unknown): void {
  if (typeof value !== "string" || !isUuid(value)) throw new TypeError(`${name} must be a UUID`);
}

function placeOf(owner: FileOwner): Place {
  switch (owner?.scope) {
    case "platform":
      return { table: "platform_files", personId: null };
    case "person":
      checkUuid("owner personId", owner.personId);
      return { table: "platform_files", personId: owner.personId };
    case "tenant":
      checkUuid("owner tenantId", owner.tenantId);
      return { table: "tenant_files", tenantId: owner.tenantId, subjectId: null };
    case "subject":
      checkUuid("owner tenantId", owner.tenantId);
      checkUuid("owner subjectId", owner.subjectId);
      return { table: "tenant_files", tenantId: owner.tenantId, subjectId: owner.subjectId };
    default:
      throw new TypeError("a file owner is the platform, a person, a tenant or a subject");
  }
}

function bindingFor(place: Place, column: "content_key" | "name", rowId: string): Binding {
  return { tenantId: place.table === "tenant_files" ? place.tenantId : null, table: place.table, column, rowId };
}

function checkName(name: string): void {
  if (typeof name !== "string" || name.length === 0 || name.length > MAX_NAME_LENGTH) {
    throw new TypeError(`a file name must be 1 to ${MAX_NAME_LENGTH} characters`);
  }
  // A name is offered back as a download name: nothing that could split a header or name a path.
  if (!name.isWellFormed() || /[\p{Cc}/\\]/u.test(name)) {
    throw new TypeError("a file name must not contain control characters, / or \\");
  }
}

function expiryOf(kind: FileKind, requested: Date | null | undefined, now: Date): Date | null {
  const lifetime = FILE_KINDS[kind];
  if (requested === undefined) return lifetime ? new Date(now.getTime() + lifetime.defaultLifetimeMs) : null;
  if (requested === null) {
    if (lifetime) throw new TypeError(`a file of kind ${kind} always expires`);
    return null;
  }
  if (!(requested instanceof Date) || Number.isNaN(requested.getTime()))
    throw new TypeError("expiresAt must be a date");
  if (requested <= now) throw new TypeError("expiresAt must be in the future");
  if (lifetime && requested.getTime() > now.getTime() + lifetime.maxLifetimeMs) {
    throw new TypeError(`a file of kind ${kind} expires within ${lifetime.maxLifetimeMs / 86_400_000} days`);
  }
  return requested;
}

interface StagedSecret {
  key: Buffer;
  blobKey: string;
  sha256: Buffer;
}

type FileRow = Selectable<TenantFilesTable> | Selectable<PlatformFilesTable>;

async function* sourceOf(content: FileContent): AsyncGenerator<Uint8Array> {
  if (Buffer.isBuffer(content)) yield content;
  else yield* content;
}

export function createFileStore(options: FileStoreOptions): FileStore {
  const { keyRing, clock, blobs } = options;
  const maxBytes = options.maxBytes ?? DEFAULT_MAX_FILE_BYTES;
  if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) throw new TypeError("maxBytes must be a non-negative integer");
  // Held outside the StagedFile, so the content key never shows when one is logged or serialised.
  const staged = new WeakMap<StagedFile, StagedSecret>();
  const issued = new WeakSet<StagedFile>();

  async function stage(content: FileContent): Promise<StagedFile> {
    if (!Buffer.isBuffer(content) && typeof content?.[Symbol.asyncIterator] !== "function") {
      throw new TypeError("file content must be a Buffer or an async iterable of bytes");
    }
    const id = uuidv7(clock.now().getTime());
    const key = newDataKey();
    const blobKey = newBlobKey();
    const hash = createHash("sha256");
    let size = 0;
    async function* counted(): AsyncGenerator<Uint8Array> {
      for await (const piece of sourceOf(content)) {
        size += piece.byteLength;
        yield piece;
      }
    }
    async function* hashed(): AsyncGenerator<Buffer> {
      for await (const part of encryptContent(key, id, counted(), maxBytes)) {
        hash.update(part);
        yield part;
      }
    }
    try {
      await blobs.put(blobKey, hashed());
    } catch (error) {
      key.fill(0);
      throw error;
    }
    const file: StagedFile = Object.freeze({ id, size });
    staged.set(file, { key, blobKey, sha256: hash.digest() });
    issued.add(file);
    return file;
  }

  function ownerOf(place: Place): FileOwner {
    if (place.table === "platform_files") {
      return place.personId === null ? { scope: "platform" } : { scope: "person", personId: place.personId };
    }
    return place.subjectId === null
      ? { scope: "tenant", tenantId: place.tenantId }
      : { scope: "subject", tenantId: place.tenantId, subjectId: place.subjectId };
  }

  function infoOf(place: Place, row: FileRow, name: string | null): FileInfo {
    return {
      id: row.id,
      owner: ownerOf(place),
      kind: row.kind,
      mediaType: row.media_type,
      name,
      size: row.size_bytes,
      createdAt: row.created_at,
      expiresAt: row.expires_at,
    };
  }

  /** The live row of `ref`, only when it belongs to exactly that owner. */
  async function findRow(tx: Tx, place: Place, id: string): Promise<FileRow> {
    const row =
      place.table === "tenant_files"
        ? await tx
            .selectFrom("tenant_files")
            .selectAll()
            .where("tenant_id", "=", place.tenantId)
            .where("id", "=", id)
            .where("deleted_at", "is", null)
            .where((eb) =>
              place.subjectId === null ? eb("subject_id", "is", null) : eb("subject_id", "=", place.subjectId),
            )
            .executeTakeFirst()
        : await tx
            .selectFrom("platform_files")
            .selectAll()
            .where("id", "=", id)
            .where("deleted_at", "is", null)
            .where((eb) =>
              place.personId === null ? eb("person_id", "is", null) : eb("person_id", "=", place.personId),
            )
            .executeTakeFirst();
    if (!row) throw new FileNotFoundError();
    return row;
  }

  async function* contentOf(key: Buffer, row: FileRow): AsyncGenerator<Buffer> {
    try {
      const blob = await blobs.get(row.blob_key);
      if (!blob) throw new FileIntegrityError("the file's content is missing from the blob store");
      const hash = createHash("sha256");
      async function* hashed(): AsyncGenerator<Uint8Array> {
        for await (const part of blob as AsyncIterable<Uint8Array>) {
          hash.update(part);
          yield part;
        }
      }
      yield* decryptContent(key, row.id, hashed());
      if (!timingSafeEqual(hash.digest(), row.ciphertext_sha256)) {
        throw new FileIntegrityError("the file's stored content is not the content that was stored");
      }
    } finally {
      key.fill(0);
    }
  }

  async function open(tx: Tx, ref: FileRef): Promise<OpenedFile> {
    const place = placeOf(ref?.owner);
    checkUuid("file id", ref.id);
    const row = await findRow(tx, place, ref.id);
    const key = await keyRing.decryptBytes(tx, row.content_key, bindingFor(place, "content_key", row.id));
    const name = row.name === null ? null : await keyRing.decrypt(tx, row.name, bindingFor(place, "name", row.id));
    return { file: infoOf(place, row, name), content: contentOf(key, row) };
  }

  return {
    maxBytes,
    stage,

    async put(tx, owner, file, content) {
      const place = placeOf(owner);
      if (!isFileKind(file?.kind)) throw new TypeError(`a file kind is one of ${Object.keys(FILE_KINDS).join(", ")}`);
      const mediaType = typeof file.mediaType === "string" ? file.mediaType.toLowerCase() : "";
      if (!MEDIA_TYPE.test(mediaType)) throw new TypeError("a media type is type/subtype, without parameters");
      if (file.name !== undefined) checkName(file.name);
      const now = clock.now();
      const expiresAt = expiryOf(file.kind, file.expiresAt, now);

      const ready = issued.has(content as StagedFile) ? (content as StagedFile) : await stage(content as FileContent);
      const secret = staged.get(ready);
      if (!secret) throw new TypeError("a staged file can be stored once only");
      staged.delete(ready);
      try {
        const contentKey = await keyRing.encrypt(tx, owner, secret.key, bindingFor(place, "content_key", ready.id));
        const name =
          file.name === undefined
            ? null
            : await keyRing.encrypt(tx, owner, file.name, bindingFor(place, "name", ready.id));
        const row = {
          id: ready.id,
          kind: file.kind,
          media_type: mediaType,
          name,
          size_bytes: ready.size,
          content_key: contentKey,
          blob_key: secret.blobKey,
          ciphertext_sha256: secret.sha256,
          created_at: now,
          expires_at: expiresAt,
          deleted_at: null,
        };
        const stored =
          place.table === "tenant_files"
            ? await tx
                .insertInto("tenant_files")
                .values({ ...row, tenant_id: place.tenantId, subject_id: place.subjectId })
                .returningAll()
                .executeTakeFirstOrThrow()
            : await tx
                .insertInto("platform_files")
                .values({ ...row, person_id: place.personId })
                .returningAll()
                .executeTakeFirstOrThrow();
        return infoOf(place, stored, file.name ?? null);
      } catch (error) {
        // Nothing will ever name the blob now; removing it at once spares the orphan sweep.
        await blobs.delete(secret.blobKey).catch(() => {});
        throw error;
      } finally {
        secret.key.fill(0);
      }
    },

    open,

    async read(tx, ref) {
      const opened = await open(tx, ref);
      const parts: Buffer[] = [];
      for await (const part of opened.content) parts.push(part);
      return { file: opened.file, content: Buffer.concat(parts) };
    },

    async delete(tx, ref) {
      const place = placeOf(ref?.owner);
      checkUuid("file id", ref.id);
      const now = clock.now();
      const deleted =
        place.table === "tenant_files"
          ? await tx
              .updateTable("tenant_files")
              .set({ deleted_at: now })
              .where("tenant_id", "=", place.tenantId)
              .where("id", "=", ref.id)
              .where("deleted_at", "is", null)
              .where((eb) =>
                place.subjectId === null ? eb("subject_id", "is", null) : eb("subject_id", "=", place.subjectId),
              )
              .executeTakeFirst()
          : await tx
              .updateTable("platform_files")
              .set({ deleted_at: now })
              .where("id", "=", ref.id)
              .where("deleted_at", "is", null)
              .where((eb) =>
                place.personId === null ? eb("person_id", "is", null) : eb("person_id", "=", place.personId),
              )
              .executeTakeFirst();
      return deleted.numUpdatedRows > 0n;
    },
  };
}
