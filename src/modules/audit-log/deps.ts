import type { CheckpointVerifier } from "../../platform/audit/checkpoint-record.ts";
import type { Audit } from "../../platform/audit/index.ts";
import type { Clock } from "../../platform/clock.ts";
import type { Database } from "../../platform/db/index.ts";
import type { RateLimiter } from "../../platform/ratelimit/limiter.ts";

/** Where the signed checkpoints are kept, and the public half of the key that signed them. */
export interface CheckpointStore {
  /** The data directory's `checkpoints/`. */
  dir: string;
  verifier: CheckpointVerifier;
}

/** What the audit log API is built on; created where the server wires its modules. */
export interface AuditLogDeps {
  db: Database;
  clock: Clock;
  audit: Audit;
  rateLimiter: RateLimiter;
  checkpoints: CheckpointStore;
}
