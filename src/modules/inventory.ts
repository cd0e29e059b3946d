import { type Inventory, PLATFORM_INVENTORY } from "../platform/inventory/index.ts";
import { identityInventory } from "./identity/inventory.ts";

/** The whole application's data inventory (P1): the platform's parts and every module's tables. */
export const APPLICATION_INVENTORY: Inventory = [...PLATFORM_INVENTORY, identityInventory];
