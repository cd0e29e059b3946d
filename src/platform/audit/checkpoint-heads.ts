import { type CheckpointHead, compareChains, headLeafHash } from "./checkpoint-record.ts";

/**
 * The heads a checkpoint's tree is built over, as the checkpoint files carry them: a line lists either every
 * head (`base: "empty"`), or only what changed since the checkpoint line before it (`base: "previous"`): the
 * heads that are new or moved, and the chains that are gone. A reader rebuilds each checkpoint's full set by
 * applying the lines in order; the Merkle root it signs is always over the full set, so an edited, dropped or
 * reordered change shows as a root that does not match.
 */

export interface HeadChange {
  base: "empty" | "previous";
  /** Heads that are new or differ from the set before, sorted by chain. */
  changed: CheckpointHead[];
  /** Chains no longer in the set, sorted. */
  removed: string[];
}

function sortedProblem(chains: readonly string[], what: string): string | undefined {
  for (let i = 1; i < chains.length; i++) {
    if (compareChains(chains[i - 1] as string, chains[i] as string) >= 0) {
      return `the ${what} are not sorted by chain, or a chain appears twice`;
    }
  }
  return undefined;
}

/** A set of chain heads with their leaf hashes, kept in tree order. */
export class HeadSet {
  #heads = new Map<string, { head: CheckpointHead; leaf: string }>();
  /** The chains in tree order; recomputed after a chain is added or removed. */
  #order: string[] | undefined = [];

  get size(): number {
    return this.#heads.size;
  }

  get(chain: string): CheckpointHead | undefined {
    return this.#heads.get(chain)?.head;
  }

  /**
   * Applies one line's change. Returns what is wrong with a change that is not one (unsorted, a chain both
   * changed and removed, a removed chain that is not there); the set is then unknown and must not be used.
   */
  apply(change: HeadChange): string | undefined {
    const problem =
      sortedProblem(
        change.changed.map((h) => h.chain),
        "heads",
      ) ?? sortedProblem(change.removed, "removed chains");
    if (problem) return problem;
    const removed = new Set(change.removed);
    const both = change.changed.find((h) => removed.has(h.chain));
    if (both) return `${both.chain} is both changed and removed`;
    if (change.base === "empty") {
      if (change.removed.length > 0) return "a list of every head removes nothing";
      this.#heads.clear();
      this.#order = undefined;
    }
    for (const chain of change.removed) {
      if (!this.#heads.delete(chain)) return `${chain} is removed but is not in the set`;
      this.#order = undefined;
    }
    for (const head of change.changed) {
      if (!this.#heads.has(head.chain)) this.#order = undefined;
      this.#heads.set(head.chain, { head, leaf: headLeafHash(head) });
    }
    return undefined;
  }

  /** What a line must carry to turn this set into `heads` (sorted by chain). */
  changeTo(heads: readonly CheckpointHead[]): HeadChange {
    const changed = heads.filter((h) => {
      const known = this.#heads.get(h.chain)?.head;
      return known?.seq !== h.seq || known.hash !== h.hash;
    });
    const present = new Set(heads.map((h) => h.chain));
    const removed = this.chains().filter((chain) => !present.has(chain));
    return { base: "previous", changed, removed };
  }

  /** The chains in tree order. */
  chains(): readonly string[] {
    this.#order ??= [...this.#heads.keys()].sort(compareChains);
    return this.#order;
  }

  heads(): CheckpointHead[] {
    return this.chains().map((chain) => this.get(chain) as CheckpointHead);
  }

  /** The leaf hashes in tree order: a fresh array, which later changes to the set leave alone. */
  leafHashes(): string[] {
    return this.chains().map((chain) => (this.#heads.get(chain) as { leaf: string }).leaf);
  }

  /** The chain's position in the tree, or -1. */
  indexOf(chain: string): number {
    const order = this.chains();
    let low = 0;
    let high = order.length - 1;
    while (low <= high) {
      const middle = (low + high) >>> 1;
      const cmp = compareChains(order[middle] as string, chain);
      if (cmp === 0) return middle;
      if (cmp < 0) low = middle + 1;
      else high = middle - 1;
    }
    return -1;
  }
}
