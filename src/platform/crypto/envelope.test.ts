import { randomBytes, randomUUID } from "node:crypto";
import { inspect } from "node:util";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { type Binding, type DataKey, DecryptionError, envelopeKey, open, openBytes, seal } from "./envelope.ts";

const keyArb: fc.Arbitrary<DataKey> = fc.record({
  id: fc.uuid(),
  version: fc.nat(),
  bytes: fc.uint8Array({ minLength: 32, maxLength: 32 }).map((bytes) => Buffer.from(bytes)),
});
const nonEmpty = fc.string({ unit: "binary", minLength: 1, maxLength: 40 });
const bindingArb: fc.Arbitrary<Binding> = fc.record({
  tenantId: fc.option(nonEmpty, { nil: null }),
  table: nonEmpty,
  column: nonEmpty,
  rowId: nonEmpty,
});
const textArb = fc.string({ unit: "binary", maxLength: 200 });
const bytesArb = fc.uint8Array({ maxLength: 300 }).map((bytes) => Buffer.from(bytes));

/** A key ring holding exactly one key. */
function ring(key: DataKey) {
  return (id: string, version: number) => (id === key.id && version === key.version ? key : undefined);
}

/** A key ring that answers any label with the same bytes: only the associated data can refuse. */
function anyLabel(bytes: Buffer) {
  return (id: string, version: number): DataKey => ({ id, version, bytes });
}

function freshKey(): DataKey {
  return { id: randomUUID(), version: 1, bytes: randomBytes(32) };
}

const binding: Binding = { tenantId: randomUUID(), table: "contacts", column: "email", rowId: randomUUID() };

function decryptionFailure(run: () => unknown): DecryptionError {
  try {
    run();
  } catch (error) {
    expect(error).toBeInstanceOf(DecryptionError);
    return error as DecryptionError;
  }
  throw new Error("expected a DecryptionError");
}

function parts(envelope: string): string[] {
  return envelope.split(".");
}

function flipBit(text: string, bit: number): string {
  const bytes = Buffer.from(text, "base64url");
  const index = bit % (bytes.length * 8);
  bytes[index >> 3] = (bytes[index >> 3] ?? 0) ^ (1 << (index & 7));
  return bytes.toString("base64url");
}

describe("seal and open", () => {
  it("round-trip any string for any binding", () => {
    fc.assert(
      fc.property(keyArb, bindingArb, textArb, (key, place, text) => {
        expect(open(ring(key), seal(key, text, place), place)).toBe(text);
      }),
    );
  });

  it("round-trip any bytes for any binding", () => {
    fc.assert(
      fc.property(keyArb, bindingArb, bytesArb, (key, place, bytes) => {
        expect(openBytes(ring(key), seal(key, bytes, place), place).equals(bytes)).toBe(true);
      }),
    );
  });

  it("keep a leading byte order mark", () => {
    const key = freshKey();
    expect(open(ring(key), seal(key, "\uFEFFhello", binding), binding)).toBe("\uFEFFhello");
  });

  it("write the documented v1 format", () => {
    const key = freshKey();
    const envelope = seal(key, "alice@example.com", binding);
    expect(envelope).toMatch(new RegExp(`^v1\\.${key.id}\\.1\\.[A-Za-z0-9_-]{16}\\.[A-Za-z0-9_-]+$`));
    expect(Buffer.from(parts(envelope)[4] ?? "", "base64url")).toHaveLength("alice@example.com".length + 16);
    expect(envelopeKey(envelope)).toEqual({ keyId: key.id, version: 1 });
  });

  it("give different envelopes for the same value each time (random IV)", () => {
    fc.assert(
      fc.property(keyArb, bindingArb, textArb, (key, place, text) => {
        const first = parts(seal(key, text, place));
        const second = parts(seal(key, text, place));
        expect(second[3]).not.toBe(first[3]);
        expect(second[4]).not.toBe(first[4]);
      }),
    );
  });
});

describe("open refuses", () => {
  const fields = fc.constantFrom<keyof Binding>("tenantId", "table", "column", "rowId");

  it("a ciphertext moved to another tenant, table, column or row", () => {
    fc.assert(
      fc.property(keyArb, bindingArb, textArb, fields, fc.option(nonEmpty, { nil: null }), (key, place, text, f, v) => {
        fc.pre(v !== place[f] && (v !== null || f === "tenantId"));
        const moved = { ...place, [f]: v };
        expect(decryptionFailure(() => open(ring(key), seal(key, text, place), moved)).reason).toBe("authentication");
      }),
    );
  });

  it("swapping ciphertexts between two rows", () => {
    const key = freshKey();
    const rowA = { ...binding, rowId: randomUUID() };
    const rowB = { ...binding, rowId: randomUUID() };
    const a = seal(key, "alice@example.com", rowA);
    const b = seal(key, "bob@example.com", rowB);
    expect(decryptionFailure(() => open(ring(key), b, rowA)).reason).toBe("authentication");
    expect(decryptionFailure(() => open(ring(key), a, rowB)).reason).toBe("authentication");
  });

  it("an envelope relabelled with another key id or version, even when that label finds the same bytes", () => {
    fc.assert(
      fc.property(keyArb, bindingArb, textArb, fc.uuid(), fc.nat(), (key, place, text, otherId, otherVersion) => {
        fc.pre(otherId !== key.id && otherVersion !== key.version);
        const [v, id, version, iv, sealed] = parts(seal(key, text, place));
        for (const relabelled of [
          [v, otherId, version, iv, sealed],
          [v, id, String(otherVersion), iv, sealed],
        ]) {
          const failure = decryptionFailure(() => open(anyLabel(key.bytes), relabelled.join("."), place));
          expect(failure.reason).toBe("authentication");
        }
      }),
    );
  });

  it("any single flipped bit in the IV, ciphertext or tag", () => {
    fc.assert(
      fc.property(keyArb, bindingArb, textArb, fc.nat(), fc.boolean(), (key, place, text, bit, inIv) => {
        const [v, id, version, iv, sealed] = parts(seal(key, text, place)) as [string, string, string, string, string];
        const tampered = inIv ? [v, id, version, flipBit(iv, bit), sealed] : [v, id, version, iv, flipBit(sealed, bit)];
        expect(decryptionFailure(() => open(ring(key), tampered.join("."), place)).reason).toBe("authentication");
      }),
    );
  });

  it("the wrong key under the right label", () => {
    fc.assert(
      fc.property(keyArb, bindingArb, textArb, (key, place, text) => {
        const impostor = { ...key, bytes: randomBytes(32) };
        expect(decryptionFailure(() => open(ring(impostor), seal(key, text, place), place)).reason).toBe(
          "authentication",
        );
      }),
    );
  });

  it("an unknown or destroyed key", () => {
    const key = freshKey();
    const envelope = seal(key, "alice@example.com", binding);
    expect(decryptionFailure(() => open(() => undefined, envelope, binding)).reason).toBe("unknown-key");
    expect(decryptionFailure(() => open(ring({ ...key, version: 2 }), envelope, binding)).reason).toBe("unknown-key");
  });

  it("malformed envelopes without consulting the key ring", () => {
    const key = freshKey();
    const [v, id, version, iv, sealed] = parts(seal(key, "x", binding)) as [string, string, string, string, string];
    const resolve = () => {
      throw new Error("the key ring must not be consulted");
    };
    for (const malformed of [
      "",
      "alice@example.com",
      [v, id, version, iv].join("."),
      [v, id, version, iv, sealed, ""].join("."),
      ["v2", id, version, iv, sealed].join("."),
      ["v1", "", version, iv, sealed].join("."),
      ["v1", "a/b", version, iv, sealed].join("."),
      [v, id, "01", iv, sealed].join("."),
      [v, id, "-1", iv, sealed].join("."),
      [v, id, "1e3", iv, sealed].join("."),
      [v, id, "99999999999999999", iv, sealed].join("."),
      [v, id, version, `${iv}=`, sealed].join("."),
      [v, id, version, iv.slice(0, -1), sealed].join("."),
      [v, id, version, iv, `${sealed}!`].join("."),
      [v, id, version, iv, "AAAA"].join("."),
      [v, id, version, iv, ""].join("."),
    ]) {
      expect(decryptionFailure(() => open(resolve, malformed, binding)).reason).toBe("malformed");
    }
  });

  it("a non-canonical base64url spelling of the same bytes", () => {
    const key = freshKey();
    const [v, id, version, iv, sealed] = parts(seal(key, "x", binding)) as [string, string, string, string, string];
    // 12 bytes are exactly 16 characters; 17 bytes ("x" and the tag) leave 2 spare bits in the last character.
    const last = sealed.at(-1) ?? "";
    const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const sibling = alphabet[alphabet.indexOf(last) ^ 1] ?? "";
    expect(Buffer.from(sealed.slice(0, -1) + sibling, "base64url").equals(Buffer.from(sealed, "base64url"))).toBe(true);
    const respelled = [v, id, version, iv, sealed.slice(0, -1) + sibling].join(".");
    expect(decryptionFailure(() => open(ring(key), respelled, binding)).reason).toBe("malformed");
  });

  it("any string with nothing but DecryptionError", () => {
    const key = freshKey();
    fc.assert(
      fc.property(fc.string({ unit: "binary" }), (text) => {
        decryptionFailure(() => open(anyLabel(key.bytes), text, binding));
      }),
    );
  });

  it("a binary value as text, pointing to openBytes", () => {
    const key = freshKey();
    const envelope = seal(key, Buffer.from([0xff, 0xfe, 0x00]), binding);
    expect(() => open(ring(key), envelope, binding)).toThrow(/openBytes/);
    expect(openBytes(ring(key), envelope, binding).equals(Buffer.from([0xff, 0xfe, 0x00]))).toBe(true);
  });
});

describe("errors", () => {
  it("never carry the plaintext, the key or the envelope", () => {
    const key = freshKey();
    const plaintext = "alice.secret@example.com";
    const envelope = seal(key, plaintext, binding);
    const failures = [
      decryptionFailure(() => open(ring(key), envelope, { ...binding, rowId: "other" })),
      decryptionFailure(() => open(() => undefined, envelope, binding)),
      decryptionFailure(() => open(ring(key), plaintext, binding)),
      decryptionFailure(() => open(ring({ ...key, bytes: randomBytes(32) }), envelope, binding)),
    ];
    for (const failure of failures) {
      for (const shown of [failure.message, JSON.stringify(failure), String(failure), inspect(failure)]) {
        for (const secret of [plaintext, key.bytes.toString("base64"), key.bytes.toString("hex"), parts(envelope)[4]]) {
          expect(shown).not.toContain(secret);
        }
      }
    }
  });
});

describe("seal refuses", () => {
  it("an empty or dotted key id, a bad version and a key that is not 32 bytes", () => {
    const key = freshKey();
    for (const bad of [
      { ...key, id: "" },
      { ...key, id: "a.b" },
      { ...key, version: -1 },
      { ...key, version: 1.5 },
      { ...key, version: Number.NaN },
      { ...key, bytes: randomBytes(16) },
      { ...key, bytes: randomBytes(33) },
    ]) {
      expect(() => seal(bad, "x", binding)).toThrow(TypeError);
    }
  });

  it("an empty binding field, an empty tenant (null is platform scope) and malformed Unicode", () => {
    const key = freshKey();
    for (const bad of [
      { ...binding, tenantId: "" },
      { ...binding, table: "" },
      { ...binding, column: "" },
      { ...binding, rowId: "" },
      { ...binding, rowId: "\uD800" },
    ]) {
      expect(() => seal(key, "x", bad)).toThrow(TypeError);
    }
    expect(() => seal(key, "\uDC00", binding)).toThrow(TypeError);
    expect(open(ring(key), seal(key, "x", { ...binding, tenantId: null }), { ...binding, tenantId: null })).toBe("x");
  });

  it("lets a resolver that returns another key fail loudly rather than as a bad envelope", () => {
    const key = freshKey();
    const envelope = seal(key, "x", binding);
    expect(() => open(() => ({ ...key, version: 7 }), envelope, binding)).toThrow(TypeError);
  });
});
