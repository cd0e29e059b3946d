import type { NewEvent } from "../../platform/audit/index.ts";
import type { Tx } from "../../platform/db/index.ts";
import type { IdentityDeps } from "./deps.ts";
import { endReplacedSession } from "./session-events.ts";
import { createSession, type ProvenFactor, reauthenticate, resolveSession } from "./sessions.ts";
import type { SsoAssertion } from "./sso-identities.ts";

/**
 * The session a single sign-on leaves (promise A3). The factor records the tenant and configuration whose
 * provider proved it (so it opens that tenant only: access.ts) and whether its `amr` counts as multi-factor
 * there. A browser already signed in as the same user keeps its session, with the factor appended and a new
 * token (as a step-up); any other session the browser held ends, as at every sign-in.
 */

/** The browser's own live, fully signed-in session, through its current token. */
export interface PresentedSession {
  sessionId: string;
  userId: string;
  token: string;
}

/** The session the browser presents, when it is live and active and its token current (own transaction). */
export async function presentedSession(
  deps: Pick<IdentityDeps, "db" | "audit" | "clock">,
  token: string | undefined,
  requestId: string,
): Promise<PresentedSession | undefined> {
  if (token === undefined) return undefined;
  const resolution = await resolveSession(deps, token, requestId);
  if (resolution.outcome !== "valid") return undefined;
  const { session, rotatedToken } = resolution;
  if (session.state !== "active" || session.viaReplacedToken) return undefined;
  return { sessionId: session.id, userId: session.userId, token: rotatedToken ?? token };
}

export function ssoFactor(assertion: SsoAssertion): ProvenFactor {
  return {
    method: "sso",
    tenantId: assertion.tenantId,
    configurationId: assertion.configurationId,
    mfa: assertion.mfa,
  };
}

export interface OpenedSession {
  sessionId: string;
  token: string;
  expiresAt: Date;
}

function signedInEvent(
  userId: string,
  sessionId: string,
  assertion: SsoAssertion,
  stepUp: boolean,
  requestId: string,
): NewEvent {
  return {
    tenantId: null,
    stream: "security",
    actor: { kind: "user", id: userId },
    action: "auth.signed-in",
    target: { type: "session", id: sessionId },
    subjects: [userId],
    details: {
      method: "sso",
      tenant: assertion.tenantId,
      configuration: assertion.configurationId,
      mfa: assertion.mfa,
      stepUp,
    },
    requestId,
  };
}

/**
 * Appends the SSO factor to the browser's own session and gives it a new token; undefined when the presented
 * token is no longer the current one (a concurrent request rotated it).
 */
export async function stepUpWithSso(
  tx: Tx,
  deps: Pick<IdentityDeps, "audit">,
  input: { presented: PresentedSession; assertion: SsoAssertion; now: Date; requestId: string },
): Promise<OpenedSession | undefined> {
  const { presented, assertion, now, requestId } = input;
  const rotated = await reauthenticate(tx, presented.sessionId, presented.token, ssoFactor(assertion), now);
  if (!rotated) return undefined;
  await deps.audit.record(tx, signedInEvent(presented.userId, presented.sessionId, assertion, true, requestId));
  return { sessionId: presented.sessionId, ...rotated };
}

/** Records the SSO factor on the browser's session of `userId`, or opens a new session with it. */
export async function openSsoSession(
  tx: Tx,
  deps: Pick<IdentityDeps, "audit">,
  input: {
    userId: string;
    assertion: SsoAssertion;
    presented: PresentedSession | undefined;
    /** The session token the browser sent, whoever's it is (a session it replaces ends). */
    previousToken: string | undefined;
    userAgent: string | undefined;
    now: Date;
    requestId: string;
  },
): Promise<OpenedSession> {
  const { userId, assertion, presented, now, requestId } = input;
  if (presented?.userId === userId) {
    const stepped = await stepUpWithSso(tx, deps, { presented, assertion, now, requestId });
    if (stepped) return stepped;
  }
  await endReplacedSession(tx, deps.audit, { previousToken: input.previousToken, userId, now, requestId });
  const created = await createSession(tx, { userId, factor: ssoFactor(assertion), now, userAgent: input.userAgent });
  await deps.audit.record(tx, signedInEvent(userId, created.id, assertion, false, requestId));
  return { sessionId: created.id, token: created.token, expiresAt: created.expiresAt };
}
