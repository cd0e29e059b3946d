import { isUuid } from "../ids.ts";

/**
 * A job's payload: named ids and nothing else (ARCHITECTURE "Personal data": job payloads carry ids only), so
 * pg-boss's tables, its dead letters and its logs never hold a name, an address or a message. A handler reads
 * what it needs through the ids, inside a transaction, where the rules of the data apply.
 */
export type JobIds = Readonly<Record<string, string>>;

/** camelCase names ending in Id: `tenantId`, `subjectId`, `exportId`. */
const ID_NAME = /^[a-z][A-Za-z0-9]{0,38}Id$/;
const MAX_IDS = 16;

export class JobPayloadError extends TypeError {
  override name = "JobPayloadError";
}

/** Returns a copy of `ids` after checking that it holds only named UUIDs; throws a JobPayloadError otherwise. */
export function checkJobIds(ids: unknown): JobIds {
  if (typeof ids !== "object" || ids === null || Array.isArray(ids)) {
    throw new JobPayloadError("a job's payload must be an object of named ids");
  }
  const prototype = Object.getPrototypeOf(ids);
  if (prototype !== Object.prototype && prototype !== null) {
    throw new JobPayloadError("a job's payload must be a plain object of named ids");
  }
  const entries = Object.entries(ids);
  if (entries.length > MAX_IDS) throw new JobPayloadError(`a job's payload holds at most ${MAX_IDS} ids`);
  const copy: Record<string, string> = {};
  for (const [name, value] of entries) {
    if (!ID_NAME.test(name)) {
      throw new JobPayloadError(`job payload field "${name}" is not an id name (camelCase ending in "Id")`);
    }
    // The value is not echoed: a rejected payload may be exactly the personal data it must not carry.
    if (typeof value !== "string" || !isUuid(value)) {
      throw new JobPayloadError(`job payload field "${name}" must be a UUID: payloads carry ids only`);
    }
    copy[name] = value.toLowerCase();
  }
  return copy;
}
