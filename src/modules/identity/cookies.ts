import type { FastifyReply, FastifyRequest } from "fastify";

/**
 * The session cookie (promise A5). HttpOnly (scripts never see the token), SameSite=Lax (not sent on
 * cross-site subrequests or form posts) and Path=/. Behind https the name carries the `__Host-` prefix, which
 * makes browsers refuse the cookie unless it is Secure, host-only and for Path=/, so no subdomain or plain
 * http page can plant or overwrite it. The Secure flag follows PUBLIC_URL rather than the connection, so it
 * holds behind a TLS-terminating proxy. For local development over plain http a browser would drop a
 * `__Host-` cookie (it cannot be Secure there), so the cookie is then named `charter_session`, without Secure.
 */

const SECURE_NAME = "__Host-charter_session";
const PLAIN_NAME = "charter_session";

export function sessionCookieName(publicUrl: URL): string {
  return publicUrl.protocol === "https:" ? SECURE_NAME : PLAIN_NAME;
}

/** The value of the named cookie in the request's Cookie header(s); the first one wins if repeated. */
export function readCookie(request: FastifyRequest, name: string): string | undefined {
  const header = request.headers.cookie;
  if (!header) return undefined;
  for (const pair of header.split(";")) {
    const eq = pair.indexOf("=");
    if (eq < 0 || pair.slice(0, eq).trim() !== name) continue;
    return pair.slice(eq + 1).trim();
  }
  return undefined;
}

function attributes(publicUrl: URL): string {
  return `Path=/; HttpOnly; SameSite=Lax${publicUrl.protocol === "https:" ? "; Secure" : ""}`;
}

/** Sets the session cookie until the session's absolute expiry (it outlives a browser restart, not the session). */
export function setSessionCookie(reply: FastifyReply, publicUrl: URL, token: string, expiresAt: Date, now: Date): void {
  const maxAge = Math.max(0, Math.floor((expiresAt.getTime() - now.getTime()) / 1000));
  reply.header("set-cookie", `${sessionCookieName(publicUrl)}=${token}; ${attributes(publicUrl)}; Max-Age=${maxAge}`);
}

export function clearSessionCookie(reply: FastifyReply, publicUrl: URL): void {
  reply.header("set-cookie", `${sessionCookieName(publicUrl)}=; ${attributes(publicUrl)}; Max-Age=0`);
}
