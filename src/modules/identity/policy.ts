import type { ProblemSlug } from "../../platform/http/problem.ts";
import type { SignInMethod } from "./policy-schema.ts";
import type { FactorMethod, SessionFactor } from "./schema.ts";

/**
 * Tenant security policies (promise A4), judged on every request to the tenant from the factors its session
 * recorded — whatever method the user signed in with, and whenever. Pure functions: access.ts loads the policy
 * in the request's tenant transaction and applies them.
 */

export interface SecurityPolicy {
  requireMfa: boolean;
  requireSso: boolean;
  /** Sessions signed in longer ago than this no longer open the tenant; null: the platform's 7 days. */
  sessionLifetimeMinutes: number | null;
  /** The sign-in methods whose factor opens the tenant. */
  allowedMethods: readonly SignInMethod[];
  allowPersonalKeys: boolean;
  allowServiceKeys: boolean;
  /** The owner who may open the security settings with a passkey while the SSO provider is down. */
  breakGlassMembershipId: string | null;
}

/** A tenant without a policy row: every sign-in method, no MFA or SSO required, API keys allowed. */
export const DEFAULT_POLICY: SecurityPolicy = {
  requireMfa: false,
  requireSso: false,
  sessionLifetimeMinutes: null,
  allowedMethods: ["password", "passkey", "sso"],
  allowPersonalKeys: true,
  allowServiceKeys: true,
  breakGlassMembershipId: null,
};

export type PolicyDecision = { outcome: "allowed" } | { outcome: "refused"; slug: ProblemSlug; detail: string };

const ALLOWED: PolicyDecision = { outcome: "allowed" };
const refused = (slug: ProblemSlug, detail: string): PolicyDecision => ({ outcome: "refused", slug, detail });

const SIGN_IN_FACTORS: ReadonlySet<FactorMethod> = new Set<SignInMethod>(["password", "passkey", "sso"]);

/**
 * The factors that count in `tenantId`: an SSO factor counts only in the tenant whose provider proved it, never
 * in the user's other tenants.
 */
export function factorsIn(factors: readonly SessionFactor[], tenantId: string): SessionFactor[] {
  return factors.filter((factor) => factor.method !== "sso" || factor.tenantId === tenantId);
}

/** Something the user knows, has, or was vouched for by an identity provider. */
type FactorClass = "knowledge" | "possession" | "federated";

const CLASS_OF: Partial<Record<FactorMethod, FactorClass>> = {
  password: "knowledge",
  totp: "possession",
  "backup-code": "possession",
  passkey: "possession",
  sso: "federated",
};

/**
 * Whether the factors (already narrowed to one tenant) are multi-factor: a user-verified passkey (possession
 * plus the PIN or biometrics the authenticator checked), an SSO factor whose `amr` the tenant accepts as
 * multi-factor, or two factors of different classes. An emailed link proves only the mailbox: it counts for
 * nothing here.
 */
export function isMultiFactor(factors: readonly SessionFactor[]): boolean {
  if (factors.some((factor) => factor.method === "passkey" && factor.userVerified === true)) return true;
  if (factors.some((factor) => factor.method === "sso" && factor.mfa === true)) return true;
  const classes = new Set(factors.map((factor) => CLASS_OF[factor.method]).filter((c) => c !== undefined));
  return classes.size >= 2;
}

/** Whether the session holds a factor that counts outside any one tenant (anything but SSO). */
export function hasAccountFactor(factors: readonly SessionFactor[]): boolean {
  return factors.some((factor) => SIGN_IN_FACTORS.has(factor.method) && factor.method !== "sso");
}

/**
 * Whether a session may open the tenant under its policy. Checked in this order, so the answer names what the
 * user must do: sign in with a method that counts here, through SSO, with a second factor, or again.
 */
export function judgeSession(
  policy: SecurityPolicy,
  session: { factors: readonly SessionFactor[]; signedInAt: Date },
  tenantId: string,
  now: Date,
): PolicyDecision {
  const counting = factorsIn(session.factors, tenantId);
  const signIns = counting.filter((factor) => SIGN_IN_FACTORS.has(factor.method));
  if (signIns.length === 0) {
    return refused(
      "sign-in-method-not-allowed",
      "this session was opened by another organization's single sign-on; sign in to open this one",
    );
  }
  if (policy.requireSso && !counting.some((factor) => factor.method === "sso")) {
    return refused("sso-required", "this organization requires signing in through its identity provider");
  }
  if (!signIns.some((factor) => policy.allowedMethods.includes(factor.method as SignInMethod))) {
    return refused(
      "sign-in-method-not-allowed",
      `this organization accepts only these sign-in methods: ${policy.allowedMethods.join(", ")}`,
    );
  }
  if (policy.requireMfa && !isMultiFactor(counting)) {
    return refused("mfa-required", "this organization requires a second factor: enrol one in your account settings");
  }
  const lifetime = policy.sessionLifetimeMinutes;
  if (lifetime !== null && now.getTime() - session.signedInAt.getTime() > lifetime * 60_000) {
    return refused("tenant-session-expired", `this organization asks you to sign in again every ${lifetime} minutes`);
  }
  return ALLOWED;
}

/** Whether an API key of `kind` may be used in the tenant: keys are not sessions, the policy says yes or no. */
export function judgeApiKey(policy: SecurityPolicy, kind: "personal" | "service"): PolicyDecision {
  const allowed = kind === "personal" ? policy.allowPersonalKeys : policy.allowServiceKeys;
  return allowed ? ALLOWED : refused("forbidden", `this organization does not accept ${kind} API keys`);
}

/** The policy as plain JSON (for answers and audit details). */
export function policyJson(policy: SecurityPolicy) {
  return { ...policy, allowedMethods: [...policy.allowedMethods] };
}
