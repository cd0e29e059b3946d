export type { Appended, Audit, AuditOptions } from "./audit.ts";
export { createAudit } from "./audit.ts";
export type { JsonObject, JsonValue } from "./canonical.ts";
export { CanonicalFormError, canonicalBytes, canonicalize } from "./canonical.ts";
export type { ChainHead } from "./chains.ts";
export { chainHeads } from "./chains.ts";
export type {
  Actor,
  ActorKind,
  AuditEvent,
  Cause,
  KnownAction,
  NewEvent,
  StoredEvent,
  Stream,
  Target,
} from "./event.ts";
export {
  ACTION_STREAMS,
  ACTOR_KINDS,
  EVENT_VERSION,
  eventHash,
  GENESIS_HASH,
  platformChainId,
  platformShard,
  STREAMS,
  SYSTEM_ACTOR,
  tenantChainId,
} from "./event.ts";
export { exportChain } from "./export.ts";
export type { ChainFailure, ChainFailureKind, Failure, VerifyOptions, VerifyReport } from "./verify.ts";
export { CHAIN_FAILURE_KINDS, verifyChains } from "./verify.ts";
