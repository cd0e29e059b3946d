import { createHmac, randomBytes, randomUUID } from "node:crypto";
import { inspect } from "node:util";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { blindIndex, blindIndexKey, NormalisationError, normaliseEmail, normalisePhone } from "./blind-index.ts";
import { deriveKey } from "./derive.ts";
import { MasterKey } from "./master-key.ts";

const master = randomBytes(32);
const tenantKey = blindIndexKey(master, { tenantId: randomUUID() });

function normalisationFailure(run: () => unknown): NormalisationError {
  try {
    run();
  } catch (error) {
    expect(error).toBeInstanceOf(NormalisationError);
    return error as NormalisationError;
  }
  throw new Error("expected a NormalisationError");
}

const whitespace = fc.string({ unit: fc.constantFrom(" ", "\t", "\n", "\u00a0"), maxLength: 3 });
const asciiPart = fc.string({ unit: fc.constantFrom(..."abcdefghijklmnopqrstuvwxyz0123456789.+_-"), minLength: 1 });
/** An ASCII address and a variant of it in random case with whitespace around. */
const emailVariants = fc
  .tuple(asciiPart, asciiPart, fc.infiniteStream(fc.boolean()), whitespace, whitespace)
  .map(([local, domain, upper, before, after]) => {
    const email = `${local}@${domain}`;
    const mixed = [...email].map((c) => (upper.next().value ? c.toUpperCase() : c)).join("");
    return { email, variant: `${before}${mixed}${after}` };
  });

describe("normaliseEmail", () => {
  it("trims, lowercases and composes", () => {
    expect(normaliseEmail("  Alice@Example.COM \n")).toBe("alice@example.com");
    expect(normaliseEmail("Rene\u0301@example.fr")).toBe("ren\u00e9@example.fr");
    expect(normaliseEmail("REN\u00c9@example.fr")).toBe("ren\u00e9@example.fr");
  });

  it("keeps dots and plus tags, which name distinct mailboxes at most providers", () => {
    expect(normaliseEmail("first.last+crm@example.com")).toBe("first.last+crm@example.com");
    expect(normaliseEmail("firstlast@example.com")).not.toBe(normaliseEmail("first.last@example.com"));
    expect(normaliseEmail("me+a@example.com")).not.toBe(normaliseEmail("me@example.com"));
  });

  it("maps case and whitespace variants to the same value", () => {
    fc.assert(
      fc.property(emailVariants, ({ email, variant }) => {
        expect(normaliseEmail(variant)).toBe(email);
      }),
    );
  });

  it("is idempotent", () => {
    fc.assert(
      fc.property(fc.string({ unit: "binary" }), fc.string({ unit: "binary" }), (local, domain) => {
        let once: string;
        try {
          once = normaliseEmail(`${local}@${domain}`);
        } catch (error) {
          expect(error).toBeInstanceOf(NormalisationError);
          return;
        }
        expect(normaliseEmail(once)).toBe(once);
      }),
    );
  });

  it("refuses text that is not an address, without echoing it", () => {
    for (const bad of ["", "   ", "alice.example.com", "@example.com", "alice@", " alice@ ", "\uD800@x"]) {
      const failure = normalisationFailure(() => normaliseEmail(bad));
      expect(failure.kind).toBe("email");
      if (bad.trim()) expect(failure.message).not.toContain(bad.trim());
    }
  });
});

describe("normalisePhone", () => {
  it("gives E.164 for the common notations of one number", () => {
    for (const notation of [
      "+44 20 7946 0958",
      "020 7946 0958",
      "(020) 7946-0958",
      "0044 20 7946 0958",
      "+442079460958",
      " 020 7946 0958 ",
    ]) {
      expect(normalisePhone(notation, "GB")).toBe("+442079460958");
    }
    expect(normalisePhone("+44 20 7946 0958", "US")).toBe("+442079460958");
    expect(normalisePhone("(202) 555-0143", "US")).toBe("+12025550143");
  });

  it("drops an extension", () => {
    expect(normalisePhone("020 7946 0958 ext. 12", "GB")).toBe("+442079460958");
  });

  it("refuses invalid numbers and surrounding text, without echoing them", () => {
    for (const bad of ["", "12", "abc", "020 7946", "+44 20 7946 0958 0958 0958", "call 020 7946 0958 now"]) {
      const failure = normalisationFailure(() => normalisePhone(bad, "GB"));
      expect(failure.kind).toBe("phone");
      if (bad) expect(`${failure.message} ${JSON.stringify(failure)} ${inspect(failure)}`).not.toContain(bad);
    }
  });

  it("refuses an unsupported default region as a programming error", () => {
    expect(() => normalisePhone("020 7946 0958", "XX" as "GB")).toThrow(TypeError);
  });
});

describe("blindIndex", () => {
  it("is a 32-byte HMAC, equal for equivalent emails", () => {
    fc.assert(
      fc.property(emailVariants, ({ email, variant }) => {
        const index = blindIndex(tenantKey, "email", normaliseEmail(variant));
        expect(index).toHaveLength(32);
        expect(index.equals(blindIndex(tenantKey, "email", email))).toBe(true);
      }),
    );
  });

  it("is equal for equivalent phone notations", () => {
    const international = blindIndex(tenantKey, "phone", normalisePhone("+44 20 7946 0958", "GB"));
    const national = blindIndex(tenantKey, "phone", normalisePhone("020 7946 0958", "GB"));
    expect(national.equals(international)).toBe(true);
    expect(blindIndex(tenantKey, "phone", normalisePhone("020 7946 0959", "GB")).equals(national)).toBe(false);
  });

  it("differs across tenants, and between a tenant and the platform", () => {
    fc.assert(
      fc.property(fc.uuid(), fc.uuid(), emailVariants, (a, b, { email }) => {
        fc.pre(a !== b);
        const indexes = [
          blindIndex(blindIndexKey(master, { tenantId: a }), "email", email),
          blindIndex(blindIndexKey(master, { tenantId: b }), "email", email),
          blindIndex(blindIndexKey(master, "platform"), "email", email),
        ].map((index) => index.toString("hex"));
        expect(new Set(indexes).size).toBe(3);
      }),
    );
  });

  it("separates kinds: the MAC input names the kind, not only the value", () => {
    const phone = "+442079460958";
    const asPhone = blindIndex(tenantKey, "phone", phone);
    expect(asPhone.equals(createHmac("sha256", tenantKey).update(phone).digest())).toBe(false);
    // Neither kind's index of a value can be produced by the other kind: the encoded kind differs.
    const email = "+442079460958@example.com";
    expect(blindIndex(tenantKey, "email", email).equals(asPhone)).toBe(false);
  });

  it("depends on the key", () => {
    fc.assert(
      fc.property(emailVariants, ({ email }) => {
        const other = blindIndexKey(randomBytes(32), "platform");
        expect(blindIndex(other, "email", email).equals(blindIndex(tenantKey, "email", email))).toBe(false);
      }),
    );
  });

  it("refuses values that are not normalised and keys that are not 32 bytes", () => {
    expect(() => blindIndex(tenantKey, "email", "Alice@example.com")).toThrow(TypeError);
    expect(() => blindIndex(tenantKey, "email", " alice@example.com")).toThrow(TypeError);
    expect(() => blindIndex(tenantKey, "phone", "020 7946 0958")).toThrow(TypeError);
    expect(() => blindIndex(tenantKey, "phone", "alice@example.com")).toThrow(TypeError);
    expect(() => blindIndex(randomBytes(16), "email", "alice@example.com")).toThrow(TypeError);
  });
});

describe("blindIndexKey", () => {
  it("derives blind-index/<scope> from the parent, the same from a Buffer or a MasterKey", () => {
    const tenantId = randomUUID();
    expect(blindIndexKey(master, "platform").equals(deriveKey(master, "blind-index/platform"))).toBe(true);
    expect(blindIndexKey(master, { tenantId }).equals(deriveKey(master, `blind-index/tenant/${tenantId}`))).toBe(true);
    expect(blindIndexKey(new MasterKey(master), { tenantId }).equals(blindIndexKey(master, { tenantId }))).toBe(true);
  });

  it("keeps a tenant whose id is 'platform' apart from the platform scope", () => {
    expect(blindIndexKey(master, { tenantId: "platform" }).equals(blindIndexKey(master, "platform"))).toBe(false);
  });

  it("refuses an empty tenant id and a parent that is not 32 bytes", () => {
    expect(() => blindIndexKey(master, { tenantId: "" })).toThrow(TypeError);
    expect(() => blindIndexKey(randomBytes(31), "platform")).toThrow(TypeError);
  });
});
