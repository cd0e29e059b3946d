import type { Config } from "../../config.ts";
import type { Audit } from "../../platform/audit/index.ts";
import type { Clock } from "../../platform/clock.ts";
import type { KeyRing } from "../../platform/crypto/key-ring.ts";
import type { Database } from "../../platform/db/index.ts";
import type { FileStore } from "../../platform/files/index.ts";
import type { Mailer } from "../../platform/mail/index.ts";
import type { OutboundClient } from "../../platform/net/index.ts";
import type { RateLimiter } from "../../platform/ratelimit/limiter.ts";
import type { PasswordHasher } from "./passwords.ts";

/** What the identity module is built on; one object, created where the application wires its modules. */
export interface IdentityDeps {
  db: Database;
  clock: Clock;
  keyRing: KeyRing;
  audit: Audit;
  mailer: Mailer;
  rateLimiter: RateLimiter;
  passwords: PasswordHasher;
  /** Where avatars are stored (the platform file store). */
  files: FileStore;
  config: Pick<Config, "publicUrl">;
  /** Every call to a URL a tenant configured (its identity providers) goes through it: SSRF rules hold. */
  outbound: OutboundClient;
  /** DNS TXT lookups, for the domains a tenant verifies (node:dns/promises resolveTxt; a fake in tests). */
  dns: DnsResolver;
}

export interface DnsResolver {
  /** The TXT records of `name`, each as its character strings; rejects (ENOTFOUND, ENODATA…) when there are none. */
  resolveTxt(name: string): Promise<string[][]>;
}
