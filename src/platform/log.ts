import pino, { type DestinationStream, type Logger, type LoggerOptions } from "pino";
import type { LogLevel } from "../config.ts";

/**
 * Application logs carry no personal data or secrets (L5). Three layers:
 * - serializers keep only what is needed of requests, responses and errors;
 * - `redact` censors personal and secret fields by name, at the top level and up to four objects deep
 *   (`field`, `*.field`, `*.*.field`, `*.*.*.field`, `*.*.*.*.field`; array elements count as a level);
 * - `scrub` masks email addresses, IPv4 addresses and long tokens in free text: in every message
 *   (`hooks.logMethod`) and, as a last net, in every finished log line (`hooks.streamWrite`).
 */

/** Field names censored wherever they occur within the covered depth. Matching is case-sensitive. */
export const REDACTED_FIELDS = [
  "email",
  "phone",
  "name",
  "displayName",
  "address",
  "password",
  "token",
  "secret",
  "authorization",
  "cookie",
  "apiKey",
  "key",
  "ip",
  "remoteAddress",
  // Whole header objects: a logged `headers` may carry forwarding addresses and credentials.
  "headers",
] as const;

/** Nesting covered by `redact`: 0 is the top level of the log object. */
export const REDACT_DEPTH = 4;

export const REDACTED = "[redacted]";

function redactPaths(): string[] {
  const paths: string[] = [];
  for (let depth = 0; depth <= REDACT_DEPTH; depth++) {
    const prefix = "*.".repeat(depth);
    for (const field of REDACTED_FIELDS) paths.push(`${prefix}${field}`);
  }
  return paths;
}

// Each pattern starts only after a character that cannot continue it and is not a backslash, so a
// replacement never splits a JSON escape sequence (`\u00e9…`) when a finished log line is scrubbed.
const EMAIL = /(?<![\\A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+/g;
const IPV4 = /(?<![\\\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])/g;
/** Candidate tokens: runs of base64/base64url characters, judged by `looksLikeToken`. */
const TOKEN_RUN = /(?<![\\A-Za-z0-9+/_=-])[A-Za-z0-9+/_-]{32,}={0,2}/g;

/** Long hex (no hyphens, so UUIDs and request ids survive) or base64 mixing digits and both cases. */
function looksLikeToken(run: string): boolean {
  if (/^[0-9a-fA-F]+$/.test(run)) return true;
  return /[0-9]/.test(run) && /[a-z]/.test(run) && /[A-Z]/.test(run);
}

/** Masks email addresses, IPv4 addresses and long hex/base64 tokens inside free text. */
export function scrub(text: string): string {
  return text
    .replace(EMAIL, "[email]")
    .replace(IPV4, "[ip]")
    .replace(TOKEN_RUN, (run) => (looksLikeToken(run) ? "[token]" : run));
}

interface RequestLike {
  id?: unknown;
  method?: unknown;
  url?: unknown;
}

/** Request id, method and path: no query string, headers, addresses or body. */
export function serializeRequest(req: RequestLike): { id: unknown; method: unknown; path: string | undefined } {
  return { id: req.id, method: req.method, path: typeof req.url === "string" ? req.url.split("?")[0] : undefined };
}

export function serializeResponse(res: { statusCode?: unknown }): { statusCode: unknown } {
  return { statusCode: res.statusCode };
}

/** Type, scrubbed message and stack (whose first line repeats the message, so it is scrubbed too). */
export function serializeError(err: unknown): { type: string; message: string; stack?: string } {
  if (!(err instanceof Error)) return { type: typeof err, message: scrub(String(err)) };
  return {
    type: err.constructor?.name ?? err.name,
    message: scrub(err.message),
    ...(err.stack ? { stack: scrub(err.stack) } : {}),
  };
}

/** The pino options for every Charter logger, Fastify's included. */
export function logOptions(level: LogLevel): LoggerOptions {
  return {
    level,
    serializers: { req: serializeRequest, res: serializeResponse, err: serializeError },
    redact: { paths: redactPaths(), censor: REDACTED },
    hooks: {
      logMethod(args, method) {
        const scrubbed = args.map((arg) => (typeof arg === "string" ? scrub(arg) : arg)) as typeof args;
        return method.apply(this, scrubbed);
      },
      streamWrite: scrub,
    },
  };
}

/** A logger with Charter's options; `destination` defaults to standard output. */
export function createLogger(level: LogLevel, destination?: DestinationStream): Logger {
  return destination ? pino(logOptions(level), destination) : pino(logOptions(level));
}
