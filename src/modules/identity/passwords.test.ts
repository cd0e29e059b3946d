import { describe, expect, it } from "vitest";
import { assertStrongPassword, checkPasswordStrength, createPasswordHasher, MIN_PASSWORD_LENGTH } from "./passwords.ts";

describe("password hashing (A1)", () => {
  const hasher = createPasswordHasher();
  const password = "a passphrase nobody would guess 73";

  it("stores Argon2id with OWASP's parameters, salted, and verifies only the right password", async () => {
    const hash = await hasher.hash(password);
    expect(hash).toMatch(/^\$argon2id\$v=19\$m=19456,t=2,p=1\$/);
    expect(hash).not.toContain(password);
    expect(await hasher.hash(password)).not.toBe(hash);
    expect(await hasher.verify(hash, password)).toBe(true);
    expect(await hasher.verify(hash, `${password} `)).toBe(false);
  });

  it("answers false, never throws, for a hash that is not Argon2", async () => {
    expect(await hasher.verify("not a hash", password)).toBe(false);
    expect(await hasher.verify("$2b$10$abcdefghijklmnopqrstuu", password)).toBe(false);
  });

  it("spends a verification's work when there is no account (verifyNothing resolves, hashing once)", async () => {
    await expect(hasher.verifyNothing(password)).resolves.toBeUndefined();
    await expect(hasher.verifyNothing("another")).resolves.toBeUndefined();
  });
});

describe("password strength (A1)", () => {
  const context = { email: "grace.hopper@navy.example", displayName: "Grace Hopper" };

  it("refuses short, common and context-derived passwords, saying why but never echoing them", async () => {
    const refused = ["Tr0ub4dor&3", "password1234567", "qwertyuiop123", "grace.hopper1906"];
    for (const candidate of refused) {
      const verdict = await checkPasswordStrength(candidate, context);
      expect(verdict.ok, candidate).toBe(false);
      if (!verdict.ok) expect(verdict.reason).not.toContain(candidate);
    }
    const short = await checkPasswordStrength("x".repeat(MIN_PASSWORD_LENGTH - 1), context);
    expect(short).toEqual({ ok: false, reason: `use at least ${MIN_PASSWORD_LENGTH} characters` });
  });

  it("accepts a long passphrase and a random password", async () => {
    expect(await checkPasswordStrength("correct horse battery staple", context)).toEqual({ ok: true });
    expect(await checkPasswordStrength("kX9#vQ2!mP7$wL4z", context)).toEqual({ ok: true });
  });

  it("assertStrongPassword throws the weak-password problem", async () => {
    await expect(assertStrongPassword("password1234567", context)).rejects.toMatchObject({ slug: "weak-password" });
    await expect(assertStrongPassword("correct horse battery staple", context)).resolves.toBeUndefined();
  });
});
