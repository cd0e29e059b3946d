import { randomBytes, randomUUID } from "node:crypto";
import { inspect } from "node:util";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { DecryptionError, newDataKey, unwrapKey, type WrapLabel, wrapKey } from "./wrap.ts";

const keyArb = fc.uint8Array({ minLength: 32, maxLength: 32 }).map((bytes) => Buffer.from(bytes));
const labelArb: fc.Arbitrary<WrapLabel> = fc.record({
  keyId: fc.uuid(),
  purpose: fc.constantFrom("platform", "tenant", "subject", "user"),
});

const label: WrapLabel = { keyId: randomUUID(), purpose: "subject" };

function decryptionFailure(run: () => unknown): DecryptionError {
  try {
    run();
  } catch (error) {
    expect(error).toBeInstanceOf(DecryptionError);
    return error as DecryptionError;
  }
  throw new Error("expected a DecryptionError");
}

describe("newDataKey", () => {
  it("gives 32 fresh random bytes each time", () => {
    const a = newDataKey();
    const b = newDataKey();
    expect(a).toHaveLength(32);
    expect(a.equals(b)).toBe(false);
  });
});

describe("wrapKey and unwrapKey", () => {
  it("round-trip any key under any parent and label", () => {
    fc.assert(
      fc.property(keyArb, keyArb, labelArb, (parent, child, wrapLabel) => {
        expect(unwrapKey(parent, wrapKey(parent, child, wrapLabel), wrapLabel).equals(child)).toBe(true);
      }),
    );
  });

  it("write the documented w1 format, different every time", () => {
    const parent = newDataKey();
    const child = newDataKey();
    const wrapped = wrapKey(parent, child, label);
    expect(wrapped).toMatch(/^w1\.[A-Za-z0-9_-]{16}\.[A-Za-z0-9_-]{64}$/);
    expect(wrapKey(parent, child, label)).not.toBe(wrapped);
  });

  it("refuse the wrong parent", () => {
    fc.assert(
      fc.property(keyArb, keyArb, keyArb, labelArb, (parent, other, child, wrapLabel) => {
        fc.pre(!parent.equals(other));
        const failure = decryptionFailure(() => unwrapKey(other, wrapKey(parent, child, wrapLabel), wrapLabel));
        expect(failure.reason).toBe("authentication");
      }),
    );
  });

  it("refuse another key id or purpose", () => {
    fc.assert(
      fc.property(keyArb, keyArb, labelArb, labelArb, (parent, child, wrapLabel, other) => {
        fc.pre(other.keyId !== wrapLabel.keyId && other.purpose !== wrapLabel.purpose);
        const wrapped = wrapKey(parent, child, wrapLabel);
        for (const wrong of [
          { ...wrapLabel, keyId: other.keyId },
          { ...wrapLabel, purpose: other.purpose },
        ]) {
          expect(decryptionFailure(() => unwrapKey(parent, wrapped, wrong)).reason).toBe("authentication");
        }
      }),
    );
  });

  it("refuse any single flipped bit", () => {
    fc.assert(
      fc.property(keyArb, keyArb, fc.nat(16 * 8 + 48 * 8 - 1), (parent, child, bit) => {
        const [v, iv, sealed] = wrapKey(parent, child, label).split(".") as [string, string, string];
        const bytes = Buffer.concat([Buffer.from(iv, "base64url"), Buffer.from(sealed, "base64url")]);
        const index = bit % (bytes.length * 8);
        bytes[index >> 3] = (bytes[index >> 3] ?? 0) ^ (1 << (index & 7));
        const tampered = [v, bytes.subarray(0, 12).toString("base64url"), bytes.subarray(12).toString("base64url")];
        expect(decryptionFailure(() => unwrapKey(parent, tampered.join("."), label)).reason).toBe("authentication");
      }),
    );
  });

  it("refuse malformed text as malformed", () => {
    const parent = newDataKey();
    const [v, iv, sealed] = wrapKey(parent, newDataKey(), label).split(".") as [string, string, string];
    for (const malformed of [
      "",
      "w1",
      [v, iv].join("."),
      ["w2", iv, sealed].join("."),
      [v, iv, sealed, ""].join("."),
      [v, iv.slice(1), sealed].join("."),
      [v, iv, sealed.slice(4)].join("."),
      [v, iv, `${sealed}=`].join("."),
    ]) {
      expect(decryptionFailure(() => unwrapKey(parent, malformed, label)).reason).toBe("malformed");
    }
  });

  it("refuse keys that are not 32 bytes and empty labels", () => {
    const key = newDataKey();
    expect(() => wrapKey(randomBytes(16), key, label)).toThrow(TypeError);
    expect(() => wrapKey(key, randomBytes(31), label)).toThrow(TypeError);
    expect(() => wrapKey(key, key, { ...label, keyId: "" })).toThrow(TypeError);
    expect(() => wrapKey(key, key, { ...label, purpose: "" })).toThrow(TypeError);
    expect(() => unwrapKey(randomBytes(33), wrapKey(key, key, label), label)).toThrow(TypeError);
  });

  it("never show the parent or child key in an error", () => {
    const parent = newDataKey();
    const child = newDataKey();
    const wrapped = wrapKey(parent, child, label);
    const failures = [
      decryptionFailure(() => unwrapKey(newDataKey(), wrapped, label)),
      decryptionFailure(() => unwrapKey(parent, wrapped, { ...label, purpose: "tenant" })),
      decryptionFailure(() => unwrapKey(parent, child.toString("hex"), label)),
    ];
    for (const failure of failures) {
      for (const shown of [failure.message, JSON.stringify(failure), String(failure), inspect(failure)]) {
        for (const key of [parent, child]) {
          expect(shown).not.toContain(key.toString("hex"));
          expect(shown).not.toContain(key.toString("base64url"));
        }
      }
    }
  });
});
