import type { FastifyReply, FastifyRequest } from "fastify";
import { readCookie } from "./cookies.ts";
import { hashToken, isTokenShaped, newToken } from "./tokens.ts";

/**
 * The pre-authentication cookie of single sign-on (promise A3): a random value the browser gets when it is sent
 * to a provider, whose SHA-256 the authorization request (and a link waiting for the account's own factor)
 * keeps. An answer from the provider counts only in the browser that asked for it, so a code or state taken
 * from one browser cannot sign in another (login CSRF, a stolen redirect).
 *
 * HttpOnly; SameSite=Lax, so it comes along on the provider's top-level redirect back; `__Host-` and Secure
 * behind https, so no subdomain or plain-http page can plant it. A browser that has one keeps it (two tabs
 * signing in at once both work); each use extends it by SSO_BINDING_SECONDS.
 */

export const SSO_BINDING_SECONDS = 10 * 60;

export function ssoBindingCookieName(publicUrl: URL): string {
  return publicUrl.protocol === "https:" ? "__Host-charter_sso" : "charter_sso";
}

/** The browser's binding value, when it sent a well-formed one. */
export function readSsoBinding(request: FastifyRequest, publicUrl: URL): string | undefined {
  const value = readCookie(request, ssoBindingCookieName(publicUrl));
  return isTokenShaped(value) ? value : undefined;
}

/** The browser's binding value, or a new one; (re)sets the cookie either way. */
export function ensureSsoBinding(request: FastifyRequest, reply: FastifyReply, publicUrl: URL): string {
  const value = readSsoBinding(request, publicUrl) ?? newToken();
  const secure = publicUrl.protocol === "https:" ? "; Secure" : "";
  reply.header(
    "set-cookie",
    `${ssoBindingCookieName(publicUrl)}=${value}; Path=/; HttpOnly; SameSite=Lax${secure}; Max-Age=${SSO_BINDING_SECONDS}`,
  );
  return value;
}

/** What the database keeps of a binding value. */
export const ssoBindingHash = (value: string): Buffer => hashToken(value);
