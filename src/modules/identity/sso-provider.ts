import * as oidc from "openid-client";
import { type OutboundClient, OutboundError } from "../../platform/net/index.ts";

/**
 * The OpenID Connect protocol with a tenant's provider (promise A3), on openid-client: discovery, the
 * authorization request (code flow, PKCE S256, state, nonce), and the answer — the RFC 9207 `iss` parameter,
 * state, PKCE, the ID token's signature, issuer, audience, nonce and times — checked before a single claim is
 * believed. Every HTTP call goes through the platform's outbound client (SSRF rules, caps, no private
 * addresses), never through fetch. No database here: callers keep transactions off the network.
 *
 * The ID token's times (exp, iat) are checked by openid-client against the system clock, not deps.clock: they
 * come from the provider's clock, which the injected business clock knows nothing of.
 */

/** What a provider's answer can be refused for, as audited (auth.sso-failed {reason}). */
export type ProviderFailure =
  | "provider-unreachable"
  | "provider-error"
  | "issuer-mismatch"
  | "state-mismatch"
  | "nonce-mismatch"
  | "invalid-response";

export class SsoProviderError extends Error {
  override name = "SsoProviderError";
  readonly reason: ProviderFailure;
  constructor(reason: ProviderFailure, options?: ErrorOptions) {
    super(`the identity provider's answer was refused: ${reason}`, options);
    this.reason = reason;
  }
}

export interface ProviderSettings {
  tenantId: string;
  issuer: string;
  clientId: string;
  clientSecret: string;
  redirectUri: string;
  /** Claims to read from UserInfo when the ID token lacks them. */
  wantedClaims: readonly string[];
}

/** What the browser is sent to, and the secrets its answer must match (kept server-side until then). */
export interface AuthorizationRequest {
  url: URL;
  state: string;
  nonce: string;
  codeVerifier: string;
}

export interface ProviderIdentity {
  /** The ID token's `iss` (checked to be the discovered issuer). */
  issuer: string;
  /** The ID token's `sub`. */
  subject: string;
  /** How the provider authenticated the person (`amr`), as it says. */
  amr: string[];
  /** The ID token's claims, completed from UserInfo (whose `sub` must match) for wanted claims it lacks. */
  claims: Readonly<Record<string, unknown>>;
}

const SCOPE = "openid email profile";
/** Seconds openid-client gives each call (the outbound client has its own, shorter caps). */
const TIMEOUT_SECONDS = 15;

/** A fetch for openid-client that is the outbound client: same SSRF rules as every tenant-supplied URL. */
export function outboundFetch(outbound: OutboundClient, tenantId: string): oidc.CustomFetch {
  return async (url, options) => {
    const response = await outbound.request({
      url,
      method: options.method,
      headers: options.headers,
      body: requestBody(options.body),
      tenantId,
      purpose: "oidc",
    });
    const headers = new Headers();
    for (const [name, value] of Object.entries(response.headers)) {
      if (value === undefined) continue;
      for (const one of Array.isArray(value) ? value : [value]) headers.append(name, one);
    }
    const empty = response.status === 204 || response.status === 205 || response.status === 304;
    return new Response(empty ? null : new Uint8Array(response.body), { status: response.status, headers });
  };
}

function requestBody(body: oidc.FetchBody): Buffer | string | undefined {
  if (body === undefined || body === null) return undefined;
  if (typeof body === "string") return body;
  if (body instanceof URLSearchParams) return body.toString();
  if (body instanceof Uint8Array) return Buffer.from(body);
  if (body instanceof ArrayBuffer) return Buffer.from(body);
  throw new TypeError("a streamed request body cannot be sent to an identity provider");
}

async function discover(outbound: OutboundClient, settings: ProviderSettings): Promise<oidc.Configuration> {
  try {
    return await oidc.discovery(
      new URL(settings.issuer),
      settings.clientId,
      undefined,
      // Basic: the one client authentication every authorization server must support (RFC 6749 2.3.1).
      oidc.ClientSecretBasic(settings.clientSecret),
      { [oidc.customFetch]: outboundFetch(outbound, settings.tenantId), timeout: TIMEOUT_SECONDS },
    );
  } catch (error) {
    throw classify(error);
  }
}

/** Discovers the provider and builds the authorization request the browser is redirected with. */
export async function beginAuthorization(
  outbound: OutboundClient,
  settings: ProviderSettings,
): Promise<AuthorizationRequest> {
  const config = await discover(outbound, settings);
  const codeVerifier = oidc.randomPKCECodeVerifier();
  const state = oidc.randomState();
  const nonce = oidc.randomNonce();
  const url = oidc.buildAuthorizationUrl(config, {
    redirect_uri: settings.redirectUri,
    scope: SCOPE,
    response_type: "code",
    code_challenge: await oidc.calculatePKCECodeChallenge(codeVerifier),
    code_challenge_method: "S256",
    state,
    nonce,
  });
  return { url, state, nonce, codeVerifier };
}

/**
 * Checks the provider's answer (`callback`: the redirect URI with the query the browser brought) and redeems
 * the code: iss (RFC 9207, required when the provider advertises it), state, PKCE, then the ID token.
 */
export async function completeAuthorization(
  outbound: OutboundClient,
  settings: ProviderSettings,
  callback: URL,
  expected: { state: string; nonce: string; codeVerifier: string },
): Promise<ProviderIdentity> {
  const config = await discover(outbound, settings);
  try {
    const tokens = await oidc.authorizationCodeGrant(config, callback, {
      pkceCodeVerifier: expected.codeVerifier,
      expectedState: expected.state,
      expectedNonce: expected.nonce,
      idTokenExpected: true,
    });
    const idToken = tokens.claims();
    if (!idToken) throw new SsoProviderError("invalid-response");
    let claims: Record<string, unknown> = { ...idToken };
    const missing = settings.wantedClaims.some((claim) => idToken[claim] === undefined);
    if (missing && tokens.access_token && config.serverMetadata().userinfo_endpoint) {
      const userInfo = await oidc.fetchUserInfo(config, tokens.access_token, idToken.sub);
      // The signed ID token wins wherever both speak.
      claims = { ...userInfo, ...idToken };
    }
    const amr = Array.isArray(idToken.amr) ? idToken.amr.filter((value) => typeof value === "string") : [];
    return { issuer: idToken.iss, subject: idToken.sub, amr, claims };
  } catch (error) {
    throw classify(error);
  }
}

/** The errors in `error`'s cause chain, outermost first. */
function chain(error: unknown): unknown[] {
  const found: unknown[] = [];
  for (let at = error; at !== undefined && at !== null && found.length < 10; at = (at as { cause?: unknown }).cause) {
    found.push(at);
  }
  return found;
}

/** Names why openid-client (or the outbound client under it) refused, without passing on its message. */
function classify(error: unknown): SsoProviderError {
  if (error instanceof SsoProviderError) return error;
  const causes = chain(error);
  if (causes.some((cause) => cause instanceof OutboundError)) return new SsoProviderError("provider-unreachable");
  if (
    causes.some((cause) => cause instanceof oidc.AuthorizationResponseError || cause instanceof oidc.ResponseBodyError)
  ) {
    return new SsoProviderError("provider-error");
  }
  const codes = causes.map((cause) => (cause as { code?: unknown }).code);
  const compared = causes.map((cause) => (cause as { claim?: unknown }).claim);
  if (compared.includes("nonce")) return new SsoProviderError("nonce-mismatch");
  const messages = causes.map((cause) => (cause instanceof Error ? cause.message : ""));
  if (codes.includes("OAUTH_INVALID_RESPONSE")) {
    if (messages.some((message) => message.includes('"iss"'))) return new SsoProviderError("issuer-mismatch");
    if (messages.some((message) => message.includes('"state"'))) return new SsoProviderError("state-mismatch");
  }
  return new SsoProviderError("invalid-response");
}
