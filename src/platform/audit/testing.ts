import { type Clock, systemClock } from "../clock.ts";
import type { KeyRing } from "../crypto/key-ring.ts";
import type { Database } from "../db/index.ts";
import { type Audit, createAudit } from "./audit.ts";

const noKeys: Pick<KeyRing, "encrypt" | "decrypt"> = {
  encrypt: () => Promise.reject(new Error("this test audit log has no key ring: pass one for personal details")),
  decrypt: () => Promise.reject(new Error("this test audit log has no key ring: pass one for personal details")),
};

/**
 * Test support: an audit log over `db`, for tests that create tenants or switch features (which record
 * through it) without looking at the log. Events with personal details need the test's key ring.
 */
export function createTestAudit(db: Database, keyRing?: KeyRing, clock: Clock = systemClock): Audit {
  return createAudit({ db, keyRing: keyRing ?? noKeys, clock });
}
