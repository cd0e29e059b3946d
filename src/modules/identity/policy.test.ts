import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  DEFAULT_POLICY,
  factorsIn,
  hasAccountFactor,
  isMultiFactor,
  judgeApiKey,
  judgeSession,
  type SecurityPolicy,
} from "./policy.ts";
import type { SessionFactor } from "./schema.ts";

const NOW = new Date("2026-04-01T09:00:00.000Z");
const A = "0190aaaa-0000-7000-8000-000000000001";
const B = "0190bbbb-0000-7000-8000-000000000002";
const at = NOW.toISOString();

const password: SessionFactor = { method: "password", at };
const totp: SessionFactor = { method: "totp", at };
const backupCode: SessionFactor = { method: "backup-code", at };
const passkeyUv: SessionFactor = { method: "passkey", at, userVerified: true };
const passkeyNoUv: SessionFactor = { method: "passkey", at, userVerified: false };
const emailLink: SessionFactor = { method: "email-link", at };
const ssoA: SessionFactor = { method: "sso", at, tenantId: A, configurationId: A, mfa: false };
const ssoAMfa: SessionFactor = { ...ssoA, mfa: true };
const ssoB: SessionFactor = { method: "sso", at, tenantId: B, configurationId: B, mfa: true };

const policy = (changes: Partial<SecurityPolicy>): SecurityPolicy => ({ ...DEFAULT_POLICY, ...changes });
const session = (factors: SessionFactor[], signedInAt = NOW) => ({ factors, signedInAt });
const slugOf = (p: SecurityPolicy, factors: SessionFactor[], tenantId = A, signedInAt = NOW) => {
  const decision = judgeSession(p, session(factors, signedInAt), tenantId, NOW);
  return decision.outcome === "allowed" ? "allowed" : decision.slug;
};

describe("tenant security policy (A4)", () => {
  it("counts multi-factor only for a user-verified passkey, an SSO factor with accepted amr, or two classes", () => {
    expect(isMultiFactor([password])).toBe(false);
    expect(isMultiFactor([password, totp])).toBe(true);
    expect(isMultiFactor([password, backupCode])).toBe(true);
    expect(isMultiFactor([password, passkeyNoUv])).toBe(true);
    expect(isMultiFactor([passkeyUv])).toBe(true);
    expect(isMultiFactor([passkeyNoUv])).toBe(false);
    expect(isMultiFactor([totp, backupCode])).toBe(false);
    expect(isMultiFactor([password, password])).toBe(false);
    expect(isMultiFactor([password, emailLink])).toBe(false);
    expect(isMultiFactor([ssoA])).toBe(false);
    expect(isMultiFactor([ssoAMfa])).toBe(true);
    expect(isMultiFactor([ssoA, totp])).toBe(true);
  });

  it("lets an SSO factor count only in the tenant whose provider proved it", () => {
    expect(factorsIn([password, ssoA, ssoB], A)).toEqual([password, ssoA]);
    expect(slugOf(DEFAULT_POLICY, [ssoB], A)).toBe("sign-in-method-not-allowed");
    expect(slugOf(DEFAULT_POLICY, [ssoA], A)).toBe("allowed");
    // tenant B's MFA-grade SSO makes no session multi-factor in A
    expect(slugOf(policy({ requireMfa: true }), [password, ssoB], A)).toBe("mfa-required");
    expect(hasAccountFactor([ssoA, ssoB])).toBe(false);
    expect(hasAccountFactor([ssoA, password])).toBe(true);
    expect(hasAccountFactor([totp])).toBe(false);
  });

  it("requires MFA whatever the sign-in method", () => {
    const requireMfa = policy({ requireMfa: true });
    expect(slugOf(requireMfa, [password])).toBe("mfa-required");
    expect(slugOf(requireMfa, [ssoA])).toBe("mfa-required");
    expect(slugOf(requireMfa, [passkeyNoUv])).toBe("mfa-required");
    expect(slugOf(requireMfa, [password, totp])).toBe("allowed");
    expect(slugOf(requireMfa, [passkeyUv])).toBe("allowed");
    expect(slugOf(requireMfa, [ssoAMfa])).toBe("allowed");
  });

  it("requires this tenant's SSO factor when SSO is required", () => {
    const requireSso = policy({ requireSso: true });
    expect(slugOf(requireSso, [password, totp])).toBe("sso-required");
    expect(slugOf(requireSso, [passkeyUv])).toBe("sso-required");
    expect(slugOf(requireSso, [password, ssoB])).toBe("sso-required");
    expect(slugOf(requireSso, [ssoA])).toBe("allowed");
    expect(slugOf(requireSso, [password, ssoA])).toBe("allowed");
  });

  it("accepts only the allowed sign-in methods, and ends sessions older than the lifetime", () => {
    expect(slugOf(policy({ allowedMethods: ["passkey"] }), [password, totp])).toBe("sign-in-method-not-allowed");
    expect(slugOf(policy({ allowedMethods: ["passkey"] }), [password, passkeyUv])).toBe("allowed");
    expect(slugOf(policy({ allowedMethods: ["password"] }), [ssoA])).toBe("sign-in-method-not-allowed");
    const hourly = policy({ sessionLifetimeMinutes: 60 });
    expect(slugOf(hourly, [password], A, new Date(NOW.getTime() - 60 * 60_000))).toBe("allowed");
    expect(slugOf(hourly, [password], A, new Date(NOW.getTime() - 60 * 60_000 - 1))).toBe("tenant-session-expired");
  });

  it("decides API keys by kind, since they are not sessions", () => {
    expect(judgeApiKey(DEFAULT_POLICY, "service").outcome).toBe("allowed");
    expect(judgeApiKey(policy({ allowServiceKeys: false }), "service").outcome).toBe("refused");
    expect(judgeApiKey(policy({ allowServiceKeys: false }), "personal").outcome).toBe("allowed");
    expect(judgeApiKey(policy({ allowPersonalKeys: false }), "personal").outcome).toBe("refused");
  });

  it("never lets a stricter policy allow what a laxer one refuses (property)", () => {
    const factor = fc.constantFrom(password, totp, backupCode, passkeyUv, passkeyNoUv, emailLink, ssoA, ssoAMfa, ssoB);
    const methods = fc.subarray(["password", "passkey", "sso"] as const, { minLength: 1 });
    const anyPolicy = fc.record({
      requireMfa: fc.boolean(),
      requireSso: fc.boolean(),
      sessionLifetimeMinutes: fc.option(fc.integer({ min: 15, max: 10_080 }), { nil: null }),
      allowedMethods: methods,
      allowPersonalKeys: fc.boolean(),
      allowServiceKeys: fc.boolean(),
      breakGlassMembershipId: fc.constant(null),
    });
    fc.assert(
      fc.property(
        anyPolicy,
        fc.array(factor, { minLength: 1, maxLength: 4 }),
        fc.integer({ min: 0, max: 8 * 24 * 60 }),
        (lax, factors, ageMinutes) => {
          const strict = { ...lax, requireMfa: true, requireSso: true };
          const signedInAt = new Date(NOW.getTime() - ageMinutes * 60_000);
          if (slugOf(strict, factors, A, signedInAt) === "allowed") {
            expect(slugOf(lax, factors, A, signedInAt)).toBe("allowed");
            expect(isMultiFactor(factorsIn(factors, A))).toBe(true);
            expect(factorsIn(factors, A).some((f) => f.method === "sso")).toBe(true);
          }
        },
      ),
    );
  });
});
