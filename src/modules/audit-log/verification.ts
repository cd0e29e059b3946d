import type { CheckpointRecord } from "../../platform/audit/checkpoint-record.ts";
import { verifyCheckpointsReport } from "../../platform/audit/checkpoint-verify.ts";
import { verifyChains } from "../../platform/audit/index.ts";
import type { AuditLogDeps } from "./deps.ts";

/**
 * Verification of one tenant's audit log (promises L3, L4), as `charter audit verify --tenant` does it: every
 * event of its chains against its hash, sequence and predecessor and each chain's head, then the chains
 * against every signed checkpoint (which catches a rewrite with every hash recomputed), and the checkpoint
 * chain itself (signatures, links, the files against the table). Failures of other tenants' chains are never
 * reported; failures of the checkpoints themselves are, since the tenant's verification rests on them.
 */

export interface TenantVerification {
  ok: boolean;
  checked: { chains: number; events: number; checkpoints: number };
  failures: { chain: string; sequence: number; kind: string; detail: string }[];
  /**
   * The newest checkpoint that verified: its record, its Ed25519 signature (base64url, over
   * `charter/audit-checkpoint/v1`, NUL, canonical(record)) and its hash, which the next checkpoint's prev names.
   */
  latestCheckpoint: { record: CheckpointRecord; signature: string; hash: string } | null;
}

export async function verifyTenant(deps: AuditLogDeps, tenantId: string): Promise<TenantVerification> {
  const report = await verifyChains(deps.db, { tenantId });
  const latest = await verifyCheckpointsReport(report, {
    db: deps.db,
    dir: deps.checkpoints.dir,
    verifier: deps.checkpoints.verifier,
    tenantId,
  });
  return {
    ok: report.failures.length === 0,
    checked: {
      chains: report.checked.chains,
      events: report.checked.events,
      checkpoints: report.checked.checkpoints ?? 0,
    },
    failures: report.failures.map((f) => ({ chain: f.chainId, sequence: f.sequence, kind: f.kind, detail: f.detail })),
    latestCheckpoint: latest ? { record: latest.record, signature: latest.sig, hash: latest.hash } : null,
  };
}
