import type { Audit, NewEvent } from "../../platform/audit/index.ts";
import type { Tx } from "../../platform/db/index.ts";
import { revokeSession, sessionOfToken } from "./sessions.ts";

/**
 * What every way of signing in records alike (password, passkey, SSO): a new sign-in ends whatever session
 * the browser held, and a factor proven on a live session (a step-up, or the second factor of a half-session)
 * is audited in one shape whatever the factor.
 */

/** Ends the session of `previousToken` (the browser's, whoever's it is) because of a new sign-in, audited. */
export async function endReplacedSession(
  tx: Tx,
  audit: Audit,
  input: { previousToken: string | undefined; userId: string; now: Date; requestId: string },
): Promise<void> {
  const replaced = await sessionOfToken(tx, input.previousToken);
  if (!replaced || !(await revokeSession(tx, replaced, "signed-in-again", input.now))) return;
  await audit.record(tx, {
    tenantId: null,
    stream: "security",
    actor: { kind: "user", id: input.userId },
    action: "auth.session-revoked",
    target: { type: "session", id: replaced },
    details: { reason: "signed-in-again" },
    requestId: input.requestId,
  });
}

/** The event of a factor proven on a session: a step-up, or the second factor completing a half-session. */
export function factorProvenEvent(
  action: "auth.reauthenticated" | "auth.second-factor",
  session: { userId: string; sessionId: string },
  details: NonNullable<NewEvent["details"]>,
  requestId: string,
): NewEvent {
  return {
    tenantId: null,
    stream: "security",
    actor: { kind: "user", id: session.userId },
    action,
    target: { type: "session", id: session.sessionId },
    subjects: [session.userId],
    details,
    requestId,
  };
}
