import type { FastifyRequest } from "fastify";
import { isSafeMethod } from "../../platform/http/app.ts";
import { HttpProblem } from "../../platform/http/problem.ts";
import { readCookie, sessionCookieName } from "./cookies.ts";

/**
 * Cross-site request forgery (promise A5). A browser labels every request with `Sec-Fetch-Site`, which a page
 * cannot forge; the kernel (platform/http/app.ts) already refuses unsafe requests labelled anything but
 * `same-origin`. What is left here are clients that send no such header: older browsers still send `Origin`
 * on every POST, PUT, PATCH and DELETE, so it must then be this deployment's origin. A request with neither
 * header does not come from a browser page, and it is accepted only when it carries no session cookie: a
 * non-browser API client holds its own credential and cannot be the victim of a forged request.
 */

/**
 * Refuses (HttpProblem "cross-site-request") an unsafe request that may have been forged by another site.
 * `hasSessionCookie`: whether it carries the session cookie. Call it for every unsafe request that is
 * authenticated by the cookie, and for sign-in and sign-up whether or not a cookie came (login CSRF: signing
 * the victim into the attacker's account).
 */
export function assertSameOrigin(request: FastifyRequest, publicUrl: URL, hasSessionCookie: boolean): void {
  if (isSafeMethod(request.method)) return;
  const site = request.headers["sec-fetch-site"];
  if (site !== undefined) {
    if (site === "same-origin") return;
    throw new HttpProblem("cross-site-request", "this request did not come from a page of this site");
  }
  const origin = request.headers.origin;
  if (origin === undefined ? !hasSessionCookie : origin === publicUrl.origin) return;
  throw new HttpProblem("cross-site-request", "this request did not come from a page of this site");
}

/**
 * For public routes that start or create an identity (sign-up, operator setup): refused when forged by
 * another site whether or not the browser already holds a session (what assertSameOrigin's cookie flag is).
 */
export function assertNotForged(request: FastifyRequest, publicUrl: URL): void {
  assertSameOrigin(request, publicUrl, readCookie(request, sessionCookieName(publicUrl)) !== undefined);
}
