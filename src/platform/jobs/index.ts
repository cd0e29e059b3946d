export { type Cadence, CadenceError, latestSlot } from "./cadence.ts";
export {
  type BatchStep,
  createJobs,
  deadLetterQueue,
  JobClaimLost,
  type JobContext,
  type JobHandler,
  type JobKindOptions,
  type JobLog,
  type Jobs,
  JobsNotStarted,
  type JobsOptions,
  type SendOptions,
  SYSTEM_ACTOR_ID,
} from "./jobs.ts";
export { checkJobIds, type JobIds, JobPayloadError } from "./payload.ts";
