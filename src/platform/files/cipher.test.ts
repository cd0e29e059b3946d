import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { DecryptionError } from "../crypto/envelope.ts";
import { uuidv7 } from "../ids.ts";
import { CHUNK_BYTES, decryptContent, encryptContent, FileTooLargeError } from "./cipher.ts";

const HEADER_BYTES = 16;
const RECORD_BYTES = CHUNK_BYTES + 12 + 16;
const LIMIT = 10 * 1024 * 1024;

async function collect(source: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const part of source) parts.push(part);
  return Buffer.concat(parts);
}

async function* pieces(data: Buffer, size: number): AsyncGenerator<Buffer> {
  for (let at = 0; at < data.length; at += size) yield data.subarray(at, at + size);
}

const encrypt = (key: Buffer, fileId: string, data: Buffer, pieceSize = 1000) =>
  collect(encryptContent(key, fileId, pieces(data, pieceSize), LIMIT));
const decrypt = (key: Buffer, fileId: string, sealed: Buffer, pieceSize = 777) =>
  collect(decryptContent(key, fileId, pieces(sealed, pieceSize)));

describe("chunked file encryption", () => {
  const key = randomBytes(32);
  const fileId = uuidv7();

  it.each([
    ["empty", 0],
    ["one byte", 1],
    ["exactly one chunk", CHUNK_BYTES],
    ["one chunk and a byte", CHUNK_BYTES + 1],
    ["several chunks and a bit", 5 * CHUNK_BYTES + 123],
    ["exactly four chunks", 4 * CHUNK_BYTES],
  ])("round-trips %s, whatever the pieces it is streamed in", async (_, size) => {
    const data = randomBytes(size);
    const sealed = await encrypt(key, fileId, data, 4096);
    const chunks = Math.max(1, Math.ceil(size / CHUNK_BYTES));
    expect(sealed.length).toBe(HEADER_BYTES + size + chunks * 28);
    expect(await decrypt(key, fileId, sealed)).toEqual(data);
    expect(await decrypt(key, fileId, sealed, sealed.length)).toEqual(data);
    expect(await decrypt(key, fileId, sealed, 1)).toEqual(data);
  });

  it("leaves no plaintext in the ciphertext, and encrypts the same content differently each time", async () => {
    const marker = Buffer.from("MARKER-7f3a9c-plaintext-never-on-disk ".repeat(5000));
    const first = await encrypt(key, fileId, marker);
    const second = await encrypt(key, fileId, marker);
    expect(first.includes(Buffer.from("MARKER-7f3a9c"))).toBe(false);
    expect(first.equals(second)).toBe(false);
  });

  describe("refuses altered content", () => {
    const data = randomBytes(3 * CHUNK_BYTES + 500);
    let sealed: Buffer;
    const chunk = (i: number) =>
      sealed.subarray(HEADER_BYTES + i * RECORD_BYTES, HEADER_BYTES + Math.min((i + 1) * RECORD_BYTES, sealed.length));
    const header = () => sealed.subarray(0, HEADER_BYTES);
    const fails = async (altered: Buffer, k = key, id = fileId) => {
      await expect(decrypt(k, id, altered)).rejects.toThrow(DecryptionError);
    };

    it("a flipped bit anywhere: header, IV, ciphertext or tag", async () => {
      sealed = await encrypt(key, fileId, data);
      for (const at of [0, HEADER_BYTES + 3, HEADER_BYTES + 40, RECORD_BYTES + HEADER_BYTES - 1, sealed.length - 1]) {
        const altered = Buffer.from(sealed);
        altered[at] = (altered[at] as number) ^ 1;
        await fails(altered);
      }
    });

    it("cut short at a chunk boundary, or mid-chunk, or to its header", async () => {
      await fails(sealed.subarray(0, HEADER_BYTES + 3 * RECORD_BYTES));
      await fails(sealed.subarray(0, HEADER_BYTES + 2 * RECORD_BYTES));
      await fails(sealed.subarray(0, sealed.length - 1));
      await fails(sealed.subarray(0, HEADER_BYTES));
      await fails(sealed.subarray(0, 5));
      await fails(Buffer.alloc(0));
    });

    it("chunks reordered, duplicated, or one appended", async () => {
      await fails(Buffer.concat([header(), chunk(1), chunk(0), chunk(2), chunk(3)]));
      await fails(Buffer.concat([header(), chunk(0), chunk(0), chunk(2), chunk(3)]));
      await fails(Buffer.concat([sealed, chunk(3)]));
    });

    it("a chunk swapped in from another file, even under the same key", async () => {
      const otherId = uuidv7();
      const other = await encrypt(key, otherId, randomBytes(data.length));
      const otherChunk1 = other.subarray(HEADER_BYTES + RECORD_BYTES, HEADER_BYTES + 2 * RECORD_BYTES);
      await fails(Buffer.concat([header(), chunk(0), otherChunk1, chunk(2), chunk(3)]));
      await fails(sealed, key, otherId);
      await fails(sealed, randomBytes(32));
      // The control: unaltered, the same bytes open.
      expect(await decrypt(key, fileId, Buffer.concat([header(), chunk(0), chunk(1), chunk(2), chunk(3)]))).toEqual(
        data,
      );
    });
  });

  it("refuses content over the limit before yielding anything past it", async () => {
    const yielded: Buffer[] = [];
    const run = async () => {
      for await (const part of encryptContent(key, fileId, pieces(randomBytes(3 * CHUNK_BYTES), 1024), 2 * CHUNK_BYTES))
        yielded.push(part);
    };
    await expect(run()).rejects.toThrow(FileTooLargeError);
    expect(Buffer.concat(yielded).length).toBeLessThanOrEqual(HEADER_BYTES + 2 * RECORD_BYTES);
    const exact = await collect(
      encryptContent(key, fileId, pieces(randomBytes(2 * CHUNK_BYTES), 1024), 2 * CHUNK_BYTES),
    );
    expect(exact.length).toBe(HEADER_BYTES + 2 * RECORD_BYTES);
  });
});
