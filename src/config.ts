import { isIPv4, isIPv6 } from "node:net";
import { resolve } from "node:path";

/** Typed configuration, read once from the environment at start-up. */
export interface Config {
  /** PostgreSQL server URL; absent means the embedded database (PGlite) in `dataDir/db`. */
  databaseUrl: string | undefined;
  /** Optional URL that logs in as `charter_app` directly (production); otherwise requests use `SET LOCAL ROLE`. */
  runtimeDatabaseUrl: string | undefined;
  dataDir: string;
  masterKey: MasterKeySource;
  host: string;
  port: number;
  publicUrl: URL;
  tls: TlsConfig | undefined;
  logLevel: LogLevel;
  /** CIDR list handed to Fastify's `trustProxy`; empty means forwarded headers are ignored. */
  trustedProxies: string[];
  rateLimit: RateLimitConfig;
  mail: MailConfig;
}

export interface MailConfig {
  /** Absent: no delivery; messages stay in the outbox (embedded mode), read with `charter mail outbox`. */
  smtp: SmtpConfig | undefined;
  /** The From address of every message: `address` or `Name <address>`. */
  from: string;
}

/** From CHARTER_SMTP_URL. TLS is required (smtps:// or STARTTLS) unless the host is loopback. */
export interface SmtpConfig {
  host: string;
  port: number;
  /** smtps://: TLS from the first byte. */
  secure: boolean;
  /** smtp:// to a host that is not loopback: the connection fails unless STARTTLS succeeds. */
  requireTls: boolean;
  user: string | undefined;
  /** Named `password` so that log redaction (log.ts) censors it should a config ever be logged. */
  password: string | undefined;
}

export type MasterKeySource =
  | { kind: "file"; path: string }
  | { kind: "env"; value: string }
  | { kind: "generated"; path: string };

export interface TlsConfig {
  certPath: string;
  keyPath: string;
  minVersion: "TLSv1.2" | "TLSv1.3";
}

export interface RateLimitConfig {
  /** Requests one source address may make per window before 429s. */
  perAddress: number;
  windowSeconds: number;
}

export const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** A bad configuration value: the message names the variable and what is wrong, for a one-line exit. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

type Env = Record<string, string | undefined>;

function nonEmpty(env: Env, name: string): string | undefined {
  const value = env[name]?.trim();
  return value === undefined || value === "" ? undefined : value;
}

function postgresUrl(env: Env, name: string): string | undefined {
  const value = nonEmpty(env, name);
  if (value === undefined) return undefined;
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new ConfigError(`${name} is not a valid URL (expected postgres://user@host:port/database)`);
  }
  if (url.protocol !== "postgres:" && url.protocol !== "postgresql:") {
    throw new ConfigError(`${name} must start with postgres:// or postgresql://, got ${url.protocol}//`);
  }
  if (url.pathname.length <= 1) throw new ConfigError(`${name} must name a database (…/dbname)`);
  return value;
}

function integer(env: Env, name: string, fallback: number, min: number, max: number): number {
  const value = nonEmpty(env, name);
  if (value === undefined) return fallback;
  if (!/^\d+$/.test(value)) throw new ConfigError(`${name} must be a whole number, got "${value}"`);
  const n = Number(value);
  if (n < min || n > max) throw new ConfigError(`${name} must be between ${min} and ${max}, got ${n}`);
  return n;
}

function cidr(entry: string, name: string): string {
  const [address, prefix, extra] = entry.split("/");
  const family = address && isIPv4(address) ? 4 : address && isIPv6(address) ? 6 : 0;
  const maxPrefix = family === 4 ? 32 : 128;
  const prefixOk = prefix === undefined || (/^\d+$/.test(prefix) && Number(prefix) <= maxPrefix);
  if (family === 0 || extra !== undefined || !prefixOk) {
    throw new ConfigError(`${name} entry "${entry}" is not an IP address or CIDR range`);
  }
  return entry;
}

const isLoopbackHost = (host: string) =>
  host === "localhost" || host === "[::1]" || (isIPv4(host) && host.startsWith("127."));

/** Never echoes the URL: it may carry the SMTP password. */
function smtpConfig(env: Env): SmtpConfig | undefined {
  const value = nonEmpty(env, "CHARTER_SMTP_URL");
  if (value === undefined) return undefined;
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new ConfigError("CHARTER_SMTP_URL is not a valid URL (expected smtp://user:password@host:587 or smtps://…)");
  }
  if (url.protocol !== "smtp:" && url.protocol !== "smtps:") {
    throw new ConfigError(`CHARTER_SMTP_URL must start with smtp:// or smtps://, got ${url.protocol}//`);
  }
  if (url.hostname === "") throw new ConfigError("CHARTER_SMTP_URL must name a host");
  if ((url.pathname !== "" && url.pathname !== "/") || url.search !== "" || url.hash !== "") {
    throw new ConfigError(
      "CHARTER_SMTP_URL must have no path, query or fragment: only smtp[s]://user:password@host:port",
    );
  }
  const secure = url.protocol === "smtps:";
  let user: string | undefined;
  let password: string | undefined;
  try {
    user = url.username === "" ? undefined : decodeURIComponent(url.username);
    password = url.password === "" ? undefined : decodeURIComponent(url.password);
  } catch {
    throw new ConfigError("CHARTER_SMTP_URL has a user or password that is not valid percent-encoding");
  }
  return {
    host: url.hostname,
    port: url.port === "" ? (secure ? 465 : 587) : Number(url.port),
    secure,
    requireTls: !secure && !isLoopbackHost(url.hostname),
    user,
    password,
  };
}

/** `address` or `Name <address>` on one line. */
const MAIL_FROM = /^(?:[^<>\r\n]*<[^\s@<>]+@[^\s@<>]+>|[^\s@<>]+@[^\s@<>]+)$/;

function mailConfig(env: Env): MailConfig {
  const smtp = smtpConfig(env);
  const from = nonEmpty(env, "CHARTER_MAIL_FROM");
  if (from !== undefined && !MAIL_FROM.test(from)) {
    throw new ConfigError(`CHARTER_MAIL_FROM must be an address or "Name <address>", got ${JSON.stringify(from)}`);
  }
  if (smtp && from === undefined) throw new ConfigError("CHARTER_SMTP_URL is set but CHARTER_MAIL_FROM is not");
  return { smtp, from: from ?? "Charter <charter@localhost>" };
}

function masterKeySource(env: Env, dataDir: string): MasterKeySource {
  const file = nonEmpty(env, "CHARTER_MASTER_KEY_FILE");
  const value = nonEmpty(env, "CHARTER_MASTER_KEY");
  if (file && value) {
    throw new ConfigError("CHARTER_MASTER_KEY_FILE and CHARTER_MASTER_KEY are both set: choose one");
  }
  if (file) return { kind: "file", path: resolve(file) };
  if (value) return { kind: "env", value };
  return { kind: "generated", path: resolve(dataDir, "keys", "master.key") };
}

function tlsConfig(env: Env): TlsConfig | undefined {
  const certPath = nonEmpty(env, "CHARTER_TLS_CERT");
  const keyPath = nonEmpty(env, "CHARTER_TLS_KEY");
  const min = nonEmpty(env, "CHARTER_TLS_MIN_VERSION") ?? "1.2";
  if (min !== "1.2" && min !== "1.3") {
    throw new ConfigError(`CHARTER_TLS_MIN_VERSION must be 1.2 or 1.3, got "${min}"`);
  }
  if (!certPath && !keyPath) return undefined;
  if (!certPath) throw new ConfigError("CHARTER_TLS_KEY is set but CHARTER_TLS_CERT is not");
  if (!keyPath) throw new ConfigError("CHARTER_TLS_CERT is set but CHARTER_TLS_KEY is not");
  return {
    certPath: resolve(certPath),
    keyPath: resolve(keyPath),
    minVersion: min === "1.3" ? "TLSv1.3" : "TLSv1.2",
  };
}

/** Reads and validates the configuration; throws ConfigError naming the first bad variable. */
export function loadConfig(env: Env = process.env): Config {
  const databaseUrl = postgresUrl(env, "DATABASE_URL");
  const runtimeDatabaseUrl = postgresUrl(env, "DATABASE_RUNTIME_URL");
  if (runtimeDatabaseUrl && !databaseUrl) {
    throw new ConfigError("DATABASE_RUNTIME_URL needs DATABASE_URL (the owner URL that runs migrations)");
  }
  const dataDir = resolve(nonEmpty(env, "CHARTER_DATA_DIR") ?? ".charter");
  const host = nonEmpty(env, "HOST") ?? "127.0.0.1";
  const port = integer(env, "PORT", 3000, 0, 65535);
  const tls = tlsConfig(env);

  const publicUrlText = nonEmpty(env, "PUBLIC_URL") ?? `${tls ? "https" : "http"}://localhost:${port}`;
  let publicUrl: URL;
  try {
    publicUrl = new URL(publicUrlText);
  } catch {
    throw new ConfigError(`PUBLIC_URL is not a valid URL: "${publicUrlText}"`);
  }
  if (publicUrl.protocol !== "http:" && publicUrl.protocol !== "https:") {
    throw new ConfigError(`PUBLIC_URL must be http:// or https://, got ${publicUrl.protocol}//`);
  }

  const logLevel = (nonEmpty(env, "LOG_LEVEL") ?? "info") as LogLevel;
  if (!LOG_LEVELS.includes(logLevel)) {
    throw new ConfigError(`LOG_LEVEL must be one of ${LOG_LEVELS.join(", ")}, got "${logLevel}"`);
  }

  const trustedProxies = (nonEmpty(env, "CHARTER_TRUSTED_PROXIES") ?? "")
    .split(",")
    .map((entry) => entry.trim())
    .filter((entry) => entry !== "")
    .map((entry) => cidr(entry, "CHARTER_TRUSTED_PROXIES"));

  return {
    databaseUrl,
    runtimeDatabaseUrl,
    dataDir,
    masterKey: masterKeySource(env, dataDir),
    host,
    port,
    publicUrl,
    tls,
    logLevel,
    trustedProxies,
    rateLimit: {
      perAddress: integer(env, "CHARTER_RATE_LIMIT", 1200, 1, 10_000_000),
      windowSeconds: integer(env, "CHARTER_RATE_LIMIT_WINDOW", 60, 1, 86_400),
    },
    mail: mailConfig(env),
  };
}
