import { createTestAudit } from "../audit/testing.ts";
import { type Clock, systemClock } from "../clock.ts";
import { createTestKeyRing } from "../crypto/testing.ts";
import type { Database } from "../db/index.ts";
import { createTenant, type NewTenant, type Tenant } from "./tenants.ts";

/**
 * Test support: a tenant created as the application creates one (its key and its audit event included), with
 * a key ring and audit log of its own, for tests that need a tenant and not those services.
 */
export function createTestTenant(db: Database, input: NewTenant, clock: Clock = systemClock): Promise<Tenant> {
  return createTenant(db, clock, input, createTestKeyRing(db, clock), createTestAudit(db, undefined, clock));
}
