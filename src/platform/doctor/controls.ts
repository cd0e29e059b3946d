import type { Config } from "../../config.ts";
import type { Database } from "../db/index.ts";

/** What a control found: whether the promise holds, and the evidence in words (never a secret). */
export interface Evidence {
  ok: boolean;
  evidence: string;
}

/** Fails with the problems found, joined, or passes with `passed` when there are none. */
export function evidenceFrom(problems: string[], passed: string): Evidence {
  return problems.length > 0 ? { ok: false, evidence: problems.join("; ") } : { ok: true, evidence: passed };
}

export interface ControlContext {
  db: Database;
  config: Config;
}

/**
 * A continuously checkable control (promise O5): `charter doctor` runs them all; a trust center can run
 * each on its `period` and keep the evidence.
 */
export interface Control {
  id: string;
  title: string;
  /** The promise IDs of PROMISES.md this control keeps. */
  promises: string[];
  /** How often it should run, as an ISO 8601 duration. */
  period: string;
  check(ctx: ControlContext): Promise<Evidence>;
}

export interface ControlResult extends Evidence {
  control: Control;
}

/** The controls of this process; the kernel registers its own and later modules add theirs. */
export class ControlRegistry {
  readonly #controls = new Map<string, Control>();

  register(...controls: Control[]): this {
    for (const control of controls) {
      if (this.#controls.has(control.id)) throw new Error(`control ${control.id} is registered twice`);
      this.#controls.set(control.id, control);
    }
    return this;
  }

  list(): Control[] {
    return [...this.#controls.values()];
  }

  /** Runs every control; a control that throws fails with the error's message as its evidence. */
  async run(ctx: ControlContext): Promise<ControlResult[]> {
    const results: ControlResult[] = [];
    for (const control of this.#controls.values()) {
      try {
        results.push({ control, ...(await control.check(ctx)) });
      } catch (error) {
        results.push({ control, ok: false, evidence: `check failed: ${(error as Error).message}` });
      }
    }
    return results;
  }
}

/** One line per control, as `charter doctor` prints them. */
export function formatResults(results: ControlResult[]): string {
  return results
    .map((r) => `${r.ok ? "PASS" : "FAIL"}  ${r.control.id} [${r.control.promises.join(", ")}]  ${r.evidence}`)
    .join("\n");
}
