import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { inclusionProof, leafHash, merkleRoot, verifyInclusion } from "./merkle.ts";

/** The test vectors of RFC 6962's reference implementation (certificate-transparency): leaves and roots. */
const VECTOR_LEAVES = [
  "",
  "00",
  "10",
  "2021",
  "3031",
  "40414243",
  "5051525354555657",
  "606162636465666768696a6b6c6d6e6f",
].map((hex) => leafHash(Buffer.from(hex, "hex")));
const VECTOR_ROOTS = [
  "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
  "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
  "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
  "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
  "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
  "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
  "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
  "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

// Distinct leaves, so that no two subtrees are equal and a proof can only fit its own position.
const leaves = fc
  .uniqueArray(fc.string(), { minLength: 1, maxLength: 70 })
  .map((texts) => texts.map((t) => leafHash(t)));
/** A tree and one of its leaves. */
const treeAndIndex = leaves.chain((hashes) => fc.tuple(fc.constant(hashes), fc.nat({ max: hashes.length - 1 })));
const flip = (hex: string, at: number) => {
  const bytes = Buffer.from(hex, "hex");
  bytes[at % bytes.length] = (bytes[at % bytes.length] as number) ^ 1;
  return bytes.toString("hex");
};

describe("RFC 6962 Merkle tree", () => {
  it("matches the reference implementation's roots for trees of 1 to 8 leaves, and the empty tree", () => {
    for (let n = 1; n <= 8; n++) expect(merkleRoot(VECTOR_LEAVES.slice(0, n))).toBe(VECTOR_ROOTS[n - 1]);
    expect(merkleRoot([])).toBe("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  });

  it("every leaf's proof verifies against the root, in trees of every shape", () => {
    fc.assert(
      fc.property(treeAndIndex, ([hashes, index]) => {
        const proof = inclusionProof(hashes, index);
        expect(verifyInclusion(hashes[index] as string, index, hashes.length, proof, merkleRoot(hashes))).toBe(true);
      }),
    );
  });

  it("a changed leaf, position, proof element or root does not verify", () => {
    fc.assert(
      fc.property(treeAndIndex, fc.nat(), ([hashes, index], at) => {
        const leaf = hashes[index] as string;
        const root = merkleRoot(hashes);
        const proof = inclusionProof(hashes, index);
        expect(verifyInclusion(flip(leaf, at), index, hashes.length, proof, root)).toBe(false);
        expect(verifyInclusion(leaf, index, hashes.length, proof, flip(root, at))).toBe(false);
        if (proof.length > 0) {
          const i = at % proof.length;
          const changed = proof.map((p, j) => (j === i ? flip(p, at) : p));
          expect(verifyInclusion(leaf, index, hashes.length, changed, root)).toBe(false);
          expect(verifyInclusion(leaf, index, hashes.length, proof.slice(1), root)).toBe(false);
          expect(verifyInclusion(leaf, index, hashes.length, [...proof, proof[0] as string], root)).toBe(false);
        }
        const other = (index + 1 + (at % hashes.length)) % hashes.length;
        if (other !== index) expect(verifyInclusion(leaf, other, hashes.length, proof, root)).toBe(false);
        expect(verifyInclusion(leaf, hashes.length, hashes.length, proof, root)).toBe(false);
      }),
    );
  });

  it("refuses to build a proof for a leaf the tree does not have, and malformed hashes", () => {
    expect(() => inclusionProof([leafHash("a")], 1)).toThrow(RangeError);
    expect(() => inclusionProof([leafHash("a")], -1)).toThrow(RangeError);
    expect(() => merkleRoot(["ABC"])).toThrow(TypeError);
    expect(verifyInclusion("nothex", 0, 1, [], merkleRoot([leafHash("a")]))).toBe(false);
  });
});
