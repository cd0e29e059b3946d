import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";
import { manualClock } from "../../platform/clock.ts";
import { NormalisationError } from "../../platform/crypto/blind-index.ts";
import { DecryptionError } from "../../platform/crypto/envelope.ts";
import { createTestKeyRing, type TestKeyRing } from "../../platform/crypto/testing.ts";
import { uuidv7 } from "../../platform/ids.ts";
import { createUser, emailIndexOf, emailRateKey, findVerifiedUserByEmail, openEmail, userEmail } from "./users.ts";

describe.each(DATABASE_KINDS)("user rows on %s", (kind) => {
  let t: TestDatabase;
  let keyRing: TestKeyRing;
  const clock = manualClock("2026-04-01T08:00:00.000Z");

  beforeAll(async () => {
    t = await openTestDatabase(kind);
    keyRing = createTestKeyRing(t.db, clock);
  });
  afterAll(() => t?.close());

  const address = () => `user.${uuidv7().slice(-12)}@example.test`;

  it("indexes an address in normal form: case and surrounding space do not matter, tags and dots do", () => {
    const plain = emailIndexOf(keyRing, "Ada.Lovelace@Example.TEST ");
    expect(plain.normalised).toBe("ada.lovelace@example.test");
    expect(plain.index.equals(emailIndexOf(keyRing, "ada.lovelace@example.test").index)).toBe(true);
    expect(plain.index.equals(emailIndexOf(keyRing, "adalovelace@example.test").index)).toBe(false);
    expect(plain.index.equals(emailIndexOf(keyRing, "ada.lovelace+x@example.test").index)).toBe(false);
    expect(emailRateKey(plain)).toEqual({ kind: "account", id: plain.index.toString("hex") });
    expect(() => emailIndexOf(keyRing, "no-at-sign")).toThrow(NormalisationError);
  });

  it("stores the address sealed for its row only, and finds the one verified account by index", async () => {
    const email = emailIndexOf(keyRing, address());
    const now = clock.now();
    const [unverified, verified] = await t.db.withPlatform(async (tx) => [
      await createUser(tx, keyRing, now, { email, displayName: "Sign-up", passwordHash: null }),
      await createUser(tx, keyRing, now, { email, displayName: "Owner", passwordHash: null, verifiedAt: now }),
    ]);
    expect(unverified.email).not.toContain(email.normalised);
    expect(unverified.password_changed_at).toBeNull();
    await t.db.withPlatform(async (tx) => {
      expect(await userEmail(tx, keyRing, verified)).toBe(email.normalised);
      expect((await findVerifiedUserByEmail(tx, email.index))?.id).toBe(verified.id);
      // Copied onto another row, the envelope does not open.
      await expect(userEmail(tx, keyRing, { id: unverified.id, email: verified.email })).rejects.toThrow(
        DecryptionError,
      );
      await expect(openEmail(tx, keyRing, "account_tokens", verified.id, verified.email)).rejects.toThrow(
        DecryptionError,
      );
    });
    // A second verified account for the address is refused by the database.
    await expect(
      t.db.withPlatform((tx) =>
        createUser(tx, keyRing, now, { email, displayName: "Twin", passwordHash: null, verifiedAt: now }),
      ),
    ).rejects.toThrow();
  });
});
