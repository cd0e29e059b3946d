import { HttpProblem, type ProblemSlug } from "../../platform/http/problem.ts";
import type { IdentityDeps } from "./deps.ts";
import type { ProviderFailure } from "./sso-provider.ts";

/**
 * Why a single sign-on is refused (promise A3). Each refusal is audited as auth.sso-failed {reason} on the
 * platform chain, in its own transaction after the request's own work rolled back, and answered with a problem
 * that says what happened without echoing anything the provider or the browser sent.
 */

export type SsoFailure =
  | ProviderFailure
  | "discovery-failed"
  | "missing-state"
  | "unknown-state"
  | "expired"
  | "replayed"
  | "binding-mismatch"
  | "configuration-mismatch"
  | "configuration-unavailable"
  | "email-missing"
  | "email-unverified"
  | "domain-unverified"
  | "not-a-member"
  | "identity-taken"
  | "no-pending-link";

const ANSWERS: Readonly<Record<SsoFailure, { slug: ProblemSlug; detail: string }>> = {
  "missing-state": { slug: "bad-request", detail: "the answer of the identity provider carries no state" },
  "unknown-state": { slug: "unauthenticated", detail: "this sign-in was not started here; start again" },
  expired: { slug: "unauthenticated", detail: "this sign-in took too long; start again" },
  replayed: { slug: "unauthenticated", detail: "this sign-in was completed already; start again" },
  "binding-mismatch": { slug: "unauthenticated", detail: "this sign-in was started in another browser; start again" },
  "configuration-mismatch": {
    slug: "unauthenticated",
    detail: "this answer is for another identity provider; start again",
  },
  "configuration-unavailable": { slug: "not-found", detail: "no such single sign-on, or it is switched off" },
  "provider-unreachable": { slug: "unavailable", detail: "the identity provider cannot be reached; try again later" },
  "discovery-failed": {
    slug: "unavailable",
    detail: "the identity provider's configuration could not be read; ask an admin to check the issuer",
  },
  "provider-error": { slug: "unauthenticated", detail: "the identity provider did not sign you in" },
  "issuer-mismatch": { slug: "unauthenticated", detail: "the answer does not come from this identity provider" },
  "state-mismatch": { slug: "unauthenticated", detail: "the answer does not belong to this sign-in" },
  "nonce-mismatch": { slug: "unauthenticated", detail: "the identity token does not belong to this sign-in" },
  "invalid-response": { slug: "unauthenticated", detail: "the identity provider's answer could not be verified" },
  "email-missing": { slug: "forbidden", detail: "the identity provider did not say which email address you have" },
  "email-unverified": {
    slug: "forbidden",
    detail: "the identity provider has not verified your email address, so it cannot make you a member",
  },
  "domain-unverified": {
    slug: "forbidden",
    detail: "your email address is not in a domain this organization verified; ask an admin to invite you",
  },
  "not-a-member": {
    slug: "forbidden",
    detail: "you are no longer a member of this organization; ask an admin to invite you again",
  },
  "identity-taken": { slug: "conflict", detail: "this sign-in is linked to another account already" },
  "no-pending-link": { slug: "not-found", detail: "no single sign-on is waiting to be linked to your account here" },
};

/** A refusal of a single sign-on, thrown inside the flow; the route records it and answers its problem. */
export class SsoRefused extends Error {
  override name = "SsoRefused";
  readonly reason: SsoFailure;
  constructor(reason: SsoFailure) {
    super(`single sign-on refused: ${reason}`);
    this.reason = reason;
  }

  toProblem(): HttpProblem {
    const { slug, detail } = ANSWERS[this.reason];
    return new HttpProblem(slug, detail);
  }
}

export interface SsoFailureRecord {
  reason: SsoFailure;
  /** The configuration concerned, when known. */
  configurationId?: string | undefined;
  tenantId?: string | undefined;
  /** The signed-in user it happened to, when there is one (linking an account). */
  userId?: string | undefined;
  requestId: string;
}

/** Writes auth.sso-failed on the actor's platform chain, in a transaction of its own. */
export async function recordSsoFailure(deps: Pick<IdentityDeps, "db" | "audit">, failure: SsoFailureRecord) {
  const { userId } = failure;
  await deps.db.withPlatform((tx) =>
    deps.audit.record(tx, {
      tenantId: null,
      stream: "security",
      actor: userId ? { kind: "user", id: userId } : { kind: "anonymous", id: null },
      action: "auth.sso-failed",
      target: { type: "sso-configuration", id: failure.configurationId ?? null },
      subjects: userId ? [userId] : [],
      details: { reason: failure.reason, ...(failure.tenantId ? { tenant: failure.tenantId } : {}) },
      requestId: failure.requestId,
    }),
  );
}

/**
 * Runs a step of the flow; a refusal is recorded and turned into its problem (`context` says what is known
 * about it, which may grow as the flow goes on). Anything else is passed on as it is.
 */
export async function auditedSso<T>(
  deps: Pick<IdentityDeps, "db" | "audit">,
  context: () => Omit<SsoFailureRecord, "reason">,
  step: () => Promise<T>,
): Promise<T> {
  try {
    return await step();
  } catch (error) {
    if (!(error instanceof SsoRefused)) throw error;
    await recordSsoFailure(deps, { ...context(), reason: error.reason });
    throw error.toProblem();
  }
}
