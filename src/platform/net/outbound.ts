import { lookup as dnsLookup } from "node:dns/promises";
import http, { type IncomingHttpHeaders, type IncomingMessage, type OutgoingHttpHeaders } from "node:http";
import https from "node:https";
import { isIP, type LookupFunction, type Socket } from "node:net";
import { canonicalAddress, refusalForAddress } from "./address.ts";

/**
 * The one client for every call Charter makes to a URL a tenant or an administrator supplied (identity
 * providers, webhooks, integrations). OWASP ASVS 5.0 SSRF requirements:
 *
 * - only https: (http: when `allowHttp` is set), never credentials in the URL;
 * - the host is resolved here, and the call is refused if ANY address is not public unicast (private,
 *   loopback, link-local, metadata, unique-local, multicast, CGNAT, documentation, benchmarking, reserved,
 *   and the IPv4-mapped / NAT64 / 6to4 forms of those); literal IP hosts are judged the same way;
 * - the connection goes to the address that was checked (pinned through the socket's `lookup`), while the
 *   Host header and TLS server name stay the original hostname, so DNS rebinding cannot swap the target;
 * - redirects are re-checked at every hop (scheme, credentials, allow-list, address, gate), followed at most
 *   `maxRedirects` times, and Authorization / Cookie never follow to another origin;
 * - the response body, the total time and the connect time are capped.
 */

export type OutboundRefusalReason =
  | "url"
  | "scheme"
  | "credentials"
  | "address"
  | "not-allowed"
  | "redirects"
  | "too-large"
  | "timeout"
  | "gate";

/** Base class of every error the client throws. Messages name the host, never a path, query or body. */
export class OutboundError extends Error {
  readonly hostname: string | undefined;
  readonly purpose: string;

  constructor(message: string, hostname: string | undefined, purpose: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
    this.hostname = hostname;
    this.purpose = purpose;
  }
}

/** The call was refused by policy (or a cap) — nothing was sent, or the exchange was cut short. */
export class OutboundRefused extends OutboundError {
  readonly reason: OutboundRefusalReason;

  constructor(
    reason: OutboundRefusalReason,
    detail: string,
    hostname: string | undefined,
    purpose: string,
    options?: ErrorOptions,
  ) {
    super(
      `Outbound ${purpose} call${hostname ? ` to ${hostname}` : ""} refused (${reason}): ${detail}`,
      hostname,
      purpose,
      options,
    );
    this.reason = reason;
  }
}

/** The call was allowed but failed on the network: name not found, connection refused, TLS, protocol. */
export class OutboundFailed extends OutboundError {
  /** The system or Node error code (ENOTFOUND, ECONNREFUSED, ERR_TLS_CERT_ALTNAME_INVALID, …), or "EFAILED". */
  readonly code: string;

  constructor(code: string, hostname: string | undefined, purpose: string, options?: ErrorOptions) {
    super(`Outbound ${purpose} call${hostname ? ` to ${hostname}` : ""} failed: ${code}`, hostname, purpose, options);
    this.code = code;
  }
}

export interface ResolvedAddress {
  address: string;
  family?: number;
}

/** Resolves a hostname to every address it has (like `dns.lookup(name, { all: true })`). */
export type Resolver = (hostname: string) => Promise<readonly ResolvedAddress[]>;

export interface SendInfo {
  tenantId: string | undefined;
  purpose: string;
  /** The URL about to be called (each redirect hop is announced again). */
  url: string;
}

export interface OutboundOptions {
  /** Defaults to node:dns lookup with `all: true` (the system resolver, /etc/hosts included). */
  resolve?: Resolver;
  /** Permit plain http: URLs (tests, explicitly configured local providers). Default false. */
  allowHttp?: boolean;
  /** Exact IP addresses that skip the public-address check (tests, explicit local providers). Default none. */
  allowAddresses?: readonly string[];
  /** Per-tenant allow-list, consulted at every hop when the request names a tenant; false refuses. */
  allowHost?: (tenantId: string, hostname: string) => Promise<boolean> | boolean;
  /** Last check before each hop is sent (the subprocessor gate); throwing stops the call. */
  beforeSend?: (info: SendInfo) => Promise<void> | void;
  /** Redirects followed at most (GET and HEAD; a 303 turns any method into GET). Default 3. */
  maxRedirects?: number;
  /** Response body cap in bytes. Default 1 MiB. */
  maxBytes?: number;
  /** Total time for the call, redirects and body included. Default 10 s. */
  timeoutMs?: number;
  /** Time allowed for each TCP connection to open. Default 5 s. */
  connectTimeoutMs?: number;
  /** Extra trusted certificates for https (a private CA). Replaces the default roots when given. */
  ca?: string | Buffer | Array<string | Buffer>;
  /** User-Agent header sent unless the request sets one. */
  userAgent?: string;
}

export interface OutboundRequest {
  url: string | URL;
  /** Default GET. */
  method?: string;
  headers?: Record<string, string>;
  body?: Buffer | string;
  tenantId?: string;
  /** What the call is for ("webhook", "oidc", …): named in errors and handed to `beforeSend`. */
  purpose: string;
  maxBytes?: number;
  timeoutMs?: number;
}

export interface OutboundResponse {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
  /** The URL that answered, after redirects. */
  url: string;
}

export interface OutboundClient {
  request(input: OutboundRequest): Promise<OutboundResponse>;
}

const MIB = 1024 * 1024;
const REDIRECTS = new Set([301, 302, 303, 307, 308]);
/** Headers that carry credentials: never sent to an origin other than the one the caller named. */
const CREDENTIAL_HEADERS = ["authorization", "cookie", "proxy-authorization"];
/** Headers the client sets itself. */
const MANAGED_HEADERS = new Set(["host", "content-length", "transfer-encoding", "connection"]);

const defaultResolver: Resolver = (hostname) => dnsLookup(hostname, { all: true, order: "verbatim" });

interface Pinned {
  address: string;
  family: 4 | 6;
}

export function createOutboundClient(options: OutboundOptions = {}): OutboundClient {
  const resolve = options.resolve ?? defaultResolver;
  const allowed = new Set<string>();
  for (const address of options.allowAddresses ?? []) {
    const canonical = canonicalAddress(address);
    if (!canonical) throw new Error(`allowAddresses: "${address}" is not an IP address`);
    allowed.add(canonical);
  }
  const maxRedirects = options.maxRedirects ?? 3;
  const connectTimeoutMs = options.connectTimeoutMs ?? 5_000;

  async function request(input: OutboundRequest): Promise<OutboundResponse> {
    const purpose = input.purpose;
    const maxBytes = input.maxBytes ?? options.maxBytes ?? MIB;
    const timeoutMs = input.timeoutMs ?? options.timeoutMs ?? 10_000;
    const controller = new AbortController();
    const { signal } = controller;
    const deadline = setTimeout(() => controller.abort(), timeoutMs);
    let url = parseUrl(input.url, undefined, purpose);
    let method = (input.method ?? "GET").toUpperCase();
    let body = input.body;
    const headers = requestHeaders(input.headers, options.userAgent);
    try {
      for (let hop = 0; ; hop++) {
        const pinned = await within(signal, admit(url, input));
        const response = await exchange({
          url,
          pinned,
          method,
          headers,
          body,
          signal,
          connectTimeoutMs,
          ca: options.ca,
          purpose,
        });
        const location = response.headers.location;
        const follow =
          REDIRECTS.has(response.statusCode ?? 0) &&
          typeof location === "string" &&
          (method === "GET" || method === "HEAD" || response.statusCode === 303);
        if (!follow) {
          // A HEAD answer has no body: its Content-Length describes what a GET would return.
          if (method === "HEAD") response.destroy();
          const data =
            method === "HEAD"
              ? Buffer.alloc(0)
              : await within(signal, readBody(response, maxBytes, hostOf(url), purpose));
          return { status: response.statusCode ?? 0, headers: response.headers, body: data, url: url.href };
        }
        response.destroy();
        if (hop >= maxRedirects) {
          throw new OutboundRefused("redirects", `more than ${maxRedirects} redirects`, hostOf(url), purpose);
        }
        const next = parseUrl(location, url, purpose);
        if (response.statusCode === 303 && method !== "HEAD") {
          method = "GET";
          body = undefined;
          for (const name of Object.keys(headers)) if (name.startsWith("content-")) delete headers[name];
        }
        if (next.origin !== url.origin) for (const name of CREDENTIAL_HEADERS) delete headers[name];
        url = next;
      }
    } catch (error) {
      if (error instanceof OutboundError) throw error;
      if (signal.aborted) {
        throw new OutboundRefused("timeout", `no complete answer within ${timeoutMs} ms`, hostOf(url), purpose, {
          cause: error,
        });
      }
      throw new OutboundFailed(errorCode(error), hostOf(url), purpose, { cause: error });
    } finally {
      clearTimeout(deadline);
    }
  }

  /** Every check before one hop is sent; returns the address to connect to. */
  async function admit(url: URL, input: OutboundRequest): Promise<Pinned> {
    const { purpose, tenantId } = input;
    const host = hostOf(url);
    if (url.protocol !== "https:" && !(url.protocol === "http:" && options.allowHttp)) {
      throw new OutboundRefused("scheme", `${url.protocol} URLs are not allowed`, host, purpose);
    }
    if (url.username || url.password) {
      throw new OutboundRefused("credentials", "the URL carries credentials", host, purpose);
    }
    if (tenantId !== undefined && options.allowHost) {
      let ok: boolean;
      try {
        ok = await options.allowHost(tenantId, host);
      } catch (error) {
        throw new OutboundRefused("not-allowed", "the allow-list check failed", host, purpose, { cause: error });
      }
      if (ok !== true)
        throw new OutboundRefused("not-allowed", "the host is not on the tenant's allow-list", host, purpose);
    }
    const pinned = await checkedAddresses(host, purpose);
    if (options.beforeSend) {
      try {
        await options.beforeSend({ tenantId, purpose, url: url.href });
      } catch (error) {
        if (error instanceof OutboundRefused) throw error;
        throw new OutboundRefused("gate", "stopped before sending", host, purpose, { cause: error });
      }
    }
    return pinned;
  }

  /** Resolves the host (unless it is an IP) and refuses unless EVERY address may be called. */
  async function checkedAddresses(host: string, purpose: string): Promise<Pinned> {
    let found: readonly ResolvedAddress[];
    if (isIP(host)) found = [{ address: host }];
    else {
      try {
        found = await resolve(host);
      } catch (error) {
        throw new OutboundFailed(errorCode(error), host, purpose, { cause: error });
      }
    }
    if (found.length === 0) throw new OutboundRefused("address", "the name resolves to no address", host, purpose);
    for (const { address } of found) {
      const canonical = canonicalAddress(address);
      if (canonical && allowed.has(canonical)) continue;
      const why = refusalForAddress(address);
      if (why) throw new OutboundRefused("address", `resolves to a non-public address (${why})`, host, purpose);
    }
    const first = found[0]?.address ?? "";
    return { address: first, family: isIP(first) === 6 ? 6 : 4 };
  }

  return { request };
}

/** The hostname without IPv6 brackets, as used for resolution, allow-lists and messages. */
function hostOf(url: URL): string {
  const host = url.hostname;
  return host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host;
}

function parseUrl(value: string | URL, base: URL | undefined, purpose: string): URL {
  try {
    return new URL(String(value), base);
  } catch {
    // The URL parser's own error carries the input, secrets included: say nothing about it.
    throw new OutboundRefused("url", "not a valid URL", base ? hostOf(base) : undefined, purpose);
  }
}

function requestHeaders(given: Record<string, string> | undefined, userAgent: string | undefined) {
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(given ?? {})) {
    const lower = name.toLowerCase();
    if (!MANAGED_HEADERS.has(lower)) headers[lower] = value;
  }
  if (userAgent && headers["user-agent"] === undefined) headers["user-agent"] = userAgent;
  return headers;
}

function errorCode(error: unknown): string {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" && /^[A-Z0-9_]+$/.test(code) ? code : "EFAILED";
}

/** Rejects as soon as the signal aborts, whatever the promise is doing. */
function within<T>(signal: AbortSignal, promise: Promise<T>): Promise<T> {
  promise.catch(() => {});
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        resolve(value);
      },
      (error) => {
        signal.removeEventListener("abort", onAbort);
        reject(error);
      },
    );
  });
}

interface Exchange {
  url: URL;
  pinned: Pinned;
  method: string;
  headers: Record<string, string>;
  body: Buffer | string | undefined;
  signal: AbortSignal;
  connectTimeoutMs: number;
  ca: OutboundOptions["ca"];
  purpose: string;
}

/** Sends one request to the pinned address and resolves with the response head. */
function exchange(x: Exchange): Promise<IncomingMessage> {
  const host = hostOf(x.url);
  const secure = x.url.protocol === "https:";
  // Whatever name the socket layer asks about, it gets the address that was checked: no second lookup.
  const lookup: LookupFunction = (_hostname, lookupOptions, callback) => {
    if (lookupOptions.all) callback(null, [{ address: x.pinned.address, family: x.pinned.family }]);
    else callback(null, x.pinned.address, x.pinned.family);
  };
  const headers: OutgoingHttpHeaders = { ...x.headers, host: x.url.host };
  if (x.body !== undefined) headers["content-length"] = Buffer.byteLength(x.body);
  return new Promise<IncomingMessage>((resolve, reject) => {
    const requestOptions: https.RequestOptions = {
      protocol: x.url.protocol,
      hostname: host,
      port: x.url.port || (secure ? 443 : 80),
      path: `${x.url.pathname}${x.url.search}`,
      method: x.method,
      headers,
      agent: false,
      lookup,
      family: x.pinned.family,
      signal: x.signal,
      ...(secure && x.ca !== undefined ? { ca: x.ca } : {}),
    };
    const req = (secure ? https : http).request(requestOptions);
    req.once("socket", (socket: Socket) => {
      if (!socket.connecting) return;
      const timer = setTimeout(() => {
        req.destroy(new OutboundRefused("timeout", `no connection within ${x.connectTimeoutMs} ms`, host, x.purpose));
      }, x.connectTimeoutMs);
      socket.once("connect", () => {
        clearTimeout(timer);
        // Belt and braces: the socket must be connected to the address that was checked.
        if (canonicalAddress(socket.remoteAddress ?? "") !== canonicalAddress(x.pinned.address)) {
          req.destroy(new OutboundRefused("address", "connected to an address that was not checked", host, x.purpose));
        }
      });
      socket.once("close", () => clearTimeout(timer));
    });
    req.once("response", resolve);
    req.once("error", reject);
    req.end(x.body);
  });
}

/** Reads the body up to `maxBytes`, refusing early when Content-Length already announces more. */
function readBody(response: IncomingMessage, maxBytes: number, host: string, purpose: string): Promise<Buffer> {
  const tooLarge = () => new OutboundRefused("too-large", `response body exceeds ${maxBytes} bytes`, host, purpose);
  const announced = response.headers["content-length"];
  if (announced !== undefined && Number(announced) > maxBytes) {
    response.destroy();
    return Promise.reject(tooLarge());
  }
  return new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    response.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size > maxBytes) {
        response.destroy();
        reject(tooLarge());
      } else chunks.push(chunk);
    });
    response.once("end", () => resolve(Buffer.concat(chunks, size)));
    response.once("error", reject);
    response.once("close", () => {
      if (!response.complete) reject(Object.assign(new Error("response ended early"), { code: "ECONNRESET" }));
    });
  });
}
