import { assertKey, DecryptionError, encodeFields, gcmOpen, gcmSeal, IV_BYTES, TAG_BYTES } from "../crypto/aead.ts";

/**
 * The encrypted form of a file's content, version 1: streamed in chunks so a large file never has to be
 * held in memory whole.
 *
 *     header  "charter-file-v1\n" (16 bytes)
 *     chunk*  iv (12 bytes) ‖ AES-256-GCM ciphertext ‖ tag (16 bytes)
 *
 * Every chunk holds CHUNK_BYTES of plaintext except the last, which holds 0 to CHUNK_BYTES (an empty file
 * is one empty last chunk). Each chunk is sealed under the file's own random content key with a fresh
 * random IV (a 100 MiB file is 1,600 chunks: far from the 2^32 messages a key may take under random IVs)
 * and associated data = ("charter/file", "v1", file id, chunk index, "last" or "more"). So a chunk moved
 * to another place in the file or into another file, a file cut short at a chunk boundary, or one with a
 * chunk appended, fails to authenticate.
 */

export const CHUNK_BYTES = 64 * 1024;
const HEADER = Buffer.from("charter-file-v1\n", "latin1");
const DOMAIN = "charter/file";
const RECORD_OVERHEAD = IV_BYTES + TAG_BYTES;

function associatedData(fileId: string, index: number, last: boolean): Buffer {
  return encodeFields([DOMAIN, "v1", fileId, String(index), last ? "last" : "more"]);
}

function sealChunk(key: Buffer, fileId: string, index: number, last: boolean, plaintext: Buffer): Buffer {
  const { iv, sealed } = gcmSeal(key, plaintext, associatedData(fileId, index, last));
  return Buffer.concat([iv, sealed]);
}

function openChunk(key: Buffer, fileId: string, index: number, last: boolean, record: Buffer): Buffer {
  return gcmOpen(key, record.subarray(0, IV_BYTES), record.subarray(IV_BYTES), associatedData(fileId, index, last));
}

/** Bytes gathered from a stream until a whole chunk (and, to know it is not the last, one byte more) is in. */
class Gather {
  private pieces: Buffer[] = [];
  length = 0;

  add(piece: Uint8Array): void {
    const bytes = Buffer.isBuffer(piece) ? piece : Buffer.from(piece.buffer, piece.byteOffset, piece.byteLength);
    this.pieces.push(bytes);
    this.length += bytes.length;
  }

  take(count: number): Buffer {
    const all = this.pieces.length === 1 ? (this.pieces[0] as Buffer) : Buffer.concat(this.pieces, this.length);
    const taken = all.subarray(0, count);
    const rest = all.subarray(count);
    this.pieces = rest.length > 0 ? [rest] : [];
    this.length = rest.length;
    return taken;
  }
}

/** The plaintext is larger than the configured limit. */
export class FileTooLargeError extends Error {
  override name = "FileTooLargeError";
  readonly maxBytes: number;

  constructor(maxBytes: number) {
    super(`the file is larger than the limit of ${maxBytes} bytes`);
    this.maxBytes = maxBytes;
  }
}

/**
 * Encrypts `source` for the file `fileId` under `key`, yielding the header and then each sealed chunk.
 * Throws FileTooLargeError as soon as the plaintext passes `maxBytes`, before anything past it is yielded.
 */
export async function* encryptContent(
  key: Buffer,
  fileId: string,
  source: AsyncIterable<Uint8Array>,
  maxBytes: number,
): AsyncGenerator<Buffer> {
  assertKey(key, "a file content key");
  yield HEADER;
  const gathered = new Gather();
  let total = 0;
  let index = 0;
  for await (const piece of source) {
    total += piece.byteLength;
    if (total > maxBytes) throw new FileTooLargeError(maxBytes);
    gathered.add(piece);
    // Strictly more than a chunk: only then is it certain this chunk is not the last.
    while (gathered.length > CHUNK_BYTES) {
      yield sealChunk(key, fileId, index, false, gathered.take(CHUNK_BYTES));
      index += 1;
    }
  }
  yield sealChunk(key, fileId, index, true, gathered.take(gathered.length));
}

/**
 * Decrypts what encryptContent produced for `fileId` under `key`, yielding plaintext chunk by chunk, each
 * only once it authenticated. Throws DecryptionError on any alteration, truncation, reordering or
 * substitution; a reader must treat the content as failed, not as shorter, when the stream throws.
 */
export async function* decryptContent(
  key: Buffer,
  fileId: string,
  source: AsyncIterable<Uint8Array>,
): AsyncGenerator<Buffer> {
  assertKey(key, "a file content key");
  const record = CHUNK_BYTES + RECORD_OVERHEAD;
  const gathered = new Gather();
  let headerChecked = false;
  let index = 0;
  for await (const piece of source) {
    gathered.add(piece);
    if (!headerChecked) {
      if (gathered.length < HEADER.length) continue;
      if (!gathered.take(HEADER.length).equals(HEADER)) throw new DecryptionError("malformed");
      headerChecked = true;
    }
    while (gathered.length > record) {
      yield openChunk(key, fileId, index, false, gathered.take(record));
      index += 1;
    }
  }
  if (!headerChecked || gathered.length < RECORD_OVERHEAD) throw new DecryptionError("malformed");
  yield openChunk(key, fileId, index, true, gathered.take(gathered.length));
}
