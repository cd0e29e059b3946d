import { checkpointInventory } from "../audit/checkpoint-inventory.ts";
import { auditInventory } from "../audit/inventory.ts";
import { cryptoInventory } from "../crypto/inventory.ts";
import { filesInventory } from "../files/inventory.ts";
import { jobsInventory } from "../jobs/inventory.ts";
import { mailInventory } from "../mail/inventory.ts";
import { kernelInventory } from "./kernel.ts";
import type { Inventory } from "./types.ts";

export { inventoryCatalogProblems } from "./catalog.ts";
export { kernelInventory } from "./kernel.ts";
export type { HoldQuery, LegalHold, NewLegalHold } from "./legal-holds.ts";
export { isHeld, placeHold, releaseHold } from "./legal-holds.ts";
export * from "./types.ts";
export { inventoryTables, validateInventory } from "./validate.ts";

/**
 * The platform's inventory: one entry per platform part that owns tables (crypto, jobs, mail and files
 * add theirs here). Business modules cannot be imported by platform/, so the application composes
 * `[...PLATFORM_INVENTORY, ...each module's]` where it wires the modules; the catalog test checks that.
 */
export const PLATFORM_INVENTORY: Inventory = [
  kernelInventory,
  cryptoInventory,
  mailInventory,
  filesInventory,
  jobsInventory,
  auditInventory,
  checkpointInventory,
];
