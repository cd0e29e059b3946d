import { createHash } from "node:crypto";

/**
 * A Merkle tree as RFC 6962 (section 2.1) defines it, so that anyone can check an inclusion proof with a few
 * lines of SHA-256: a leaf hashes as SHA-256(0x00 ‖ leaf), an inner node as SHA-256(0x01 ‖ left ‖ right),
 * the empty tree as SHA-256 of nothing, and a tree of n > 1 leaves splits at the largest power of two below n
 * (so an unbalanced tree needs no padding). The prefixes keep a leaf from passing for an inner node.
 * Hashes are lowercase hex throughout.
 */

const LEAF = Buffer.from([0]);
const NODE = Buffer.from([1]);
const HEX64 = /^[0-9a-f]{64}$/;

const sha256 = (...parts: Buffer[]) => createHash("sha256").update(Buffer.concat(parts)).digest();

/** The hash of one leaf, given its bytes (a string is taken as UTF-8). */
export function leafHash(leaf: Buffer | string): string {
  return sha256(LEAF, Buffer.from(leaf)).toString("hex");
}

function nodeHash(left: Buffer, right: Buffer): Buffer {
  return sha256(NODE, left, right);
}

/** The largest power of two strictly below n (n ≥ 2). */
function split(n: number): number {
  let k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

function root(hashes: readonly Buffer[]): Buffer {
  if (hashes.length === 0) return sha256();
  if (hashes.length === 1) return hashes[0] as Buffer;
  const k = split(hashes.length);
  return nodeHash(root(hashes.slice(0, k)), root(hashes.slice(k)));
}

function path(index: number, hashes: readonly Buffer[]): Buffer[] {
  if (hashes.length <= 1) return [];
  const k = split(hashes.length);
  return index < k
    ? [...path(index, hashes.slice(0, k)), root(hashes.slice(k))]
    : [...path(index - k, hashes.slice(k)), root(hashes.slice(0, k))];
}

function toBuffers(leafHashes: readonly string[]): Buffer[] {
  return leafHashes.map((h) => {
    if (!HEX64.test(h)) throw new TypeError("a leaf hash must be 64 lowercase hex characters");
    return Buffer.from(h, "hex");
  });
}

/** The root of the tree over these leaf hashes, in order (RFC 6962 MTH). */
export function merkleRoot(leafHashes: readonly string[]): string {
  return root(toBuffers(leafHashes)).toString("hex");
}

/** The audit path of leaf `index` (RFC 6962 PATH): sibling hashes from the leaf up to the root. */
export function inclusionProof(leafHashes: readonly string[], index: number): string[] {
  if (!Number.isInteger(index) || index < 0 || index >= leafHashes.length) {
    throw new RangeError(`leaf index ${index} is outside a tree of ${leafHashes.length} leaves`);
  }
  return path(index, toBuffers(leafHashes)).map((h) => h.toString("hex"));
}

/**
 * Whether `proof` shows that the leaf with hash `leaf` sits at `index` in the tree of `size` leaves whose root
 * is `rootHash` (the algorithm of RFC 9162 section 2.1.3.2). Malformed input is simply not a proof.
 */
export function verifyInclusion(
  leaf: string,
  index: number,
  size: number,
  proof: readonly string[],
  rootHash: string,
): boolean {
  if (!Number.isSafeInteger(index) || !Number.isSafeInteger(size) || index < 0 || index >= size) return false;
  if (!HEX64.test(leaf) || !HEX64.test(rootHash) || !proof.every((p) => HEX64.test(p))) return false;
  // Numbers above 2^31 would break the bit operations below; no checkpoint has that many chains.
  if (size > 2 ** 31) return false;
  let fn = index;
  let sn = size - 1;
  let r: Buffer = Buffer.from(leaf, "hex");
  for (const hex of proof) {
    if (sn === 0) return false;
    const p = Buffer.from(hex, "hex");
    if (fn & 1 || fn === sn) {
      r = nodeHash(p, r);
      while (!(fn & 1) && fn !== 0) {
        fn >>>= 1;
        sn >>>= 1;
      }
    } else {
      r = nodeHash(r, p);
    }
    fn >>>= 1;
    sn >>>= 1;
  }
  return sn === 0 && r.toString("hex") === rootHash;
}
