import {
  type Category,
  type ColumnEntry,
  type Retention,
  type SubjectLocator,
  WITH_TENANT_DATA,
} from "../../platform/inventory/types.ts";

/**
 * The column entries the identity module's inventory files share (inventory.ts, devices-alerts-inventory.ts,
 * sso-inventory.ts). A file of its own: inventory.ts composes the other two, which therefore cannot import it.
 */

/** Rows that go a day after what they record: counts of failures, sign-ins in flight. */
export const ONE_DAY: Retention = { anchor: "event-time", duration: "P1D", action: "delete" };

/**
 * Personal data of the row's subject, held to provide the service the user signed up for (legal basis
 * "contract" unless `extra` says otherwise); erasure deletes the row.
 */
export function personal(
  category: Category,
  purpose: string,
  retention: Retention,
  extra: Partial<ColumnEntry> = {},
): ColumnEntry {
  return {
    category,
    personal: true,
    purpose,
    legalBasis: "contract",
    keyScope: null,
    erasure: { action: "delete" },
    retention,
    ...extra,
  };
}

/** The person a tenant table's row is about, found through its column naming a membership. */
export function throughMembership<C extends string>(column: C): SubjectLocator<C> {
  return {
    kind: "path",
    via: [{ column, references: { table: "memberships", column: "id" }, link: "foreign-key" }],
    of: "user",
  };
}

/**
 * A column naming a membership other than the row's subject (who invited, removed, created…): personal data of
 * that member, kept while the row lives; erasing the member empties it.
 */
export function byMember(column: string, purpose: string): ColumnEntry {
  return personal("account", purpose, WITH_TENANT_DATA, {
    erasure: { action: "anonymise", strategy: "set-null" },
    subject: throughMembership(column),
  });
}
