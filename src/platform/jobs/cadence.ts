/**
 * When a schedule is due, in UTC, computed from the injected clock (never the database's time):
 * - every N minutes, N dividing a day, on the multiples of N counted from midnight;
 * - hourly at minute M;
 * - daily at HH:MM.
 */
export type Cadence =
  | { kind: "every"; minutes: number }
  | { kind: "hourly"; minute: number }
  | { kind: "daily"; at: string };

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
const HH_MM = /^([01]\d|2[0-3]):([0-5]\d)$/;

export class CadenceError extends TypeError {
  override name = "CadenceError";
}

/** The cadence's period and its offset into the period, in milliseconds; throws on a cadence that is not one. */
function periodOf(cadence: Cadence): { period: number; offset: number } {
  switch (cadence.kind) {
    case "every": {
      const n = cadence.minutes;
      if (!Number.isInteger(n) || n < 1 || (24 * 60) % n !== 0) {
        throw new CadenceError(`every ${n} minutes: the minutes must be a whole number that divides a day`);
      }
      return { period: n * MINUTE, offset: 0 };
    }
    case "hourly": {
      const m = cadence.minute;
      if (!Number.isInteger(m) || m < 0 || m > 59) throw new CadenceError(`hourly at minute ${m}: not a minute`);
      return { period: HOUR, offset: m * MINUTE };
    }
    case "daily": {
      const match = HH_MM.exec(cadence.at);
      if (!match) throw new CadenceError(`daily at "${cadence.at}": not a time written HH:MM`);
      return { period: DAY, offset: Number(match[1]) * HOUR + Number(match[2]) * MINUTE };
    }
    default:
      throw new CadenceError(`unknown cadence ${JSON.stringify(cadence)}`);
  }
}

/** Throws a CadenceError unless `cadence` is a valid cadence. */
export function checkCadence(cadence: Cadence): void {
  periodOf(cadence);
}

/** The latest slot of `cadence` at or before `now`. */
export function latestSlot(cadence: Cadence, now: Date): Date {
  const { period, offset } = periodOf(cadence);
  const t = now.getTime() - offset;
  return new Date(Math.floor(t / period) * period + offset);
}
