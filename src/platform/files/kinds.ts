/**
 * What a file is for, which decides how long it lives unless its writer says otherwise. Exports and
 * imports always expire (a person's or a tenant's data must not linger in a download nobody fetched);
 * the others live until they are deleted, or until their owner's data goes.
 */
export const FILE_KINDS = {
  /** A download prepared for someone: a subject access export, a tenant's data export. */
  export: { defaultLifetimeMs: 7 * 86_400_000, maxLifetimeMs: 30 * 86_400_000 },
  /** An upload waiting to be imported. */
  import: { defaultLifetimeMs: 7 * 86_400_000, maxLifetimeMs: 30 * 86_400_000 },
  /** A person's or an organisation's picture. */
  avatar: null,
  /** A published document: a policy, a contract, a trust-center report. */
  document: null,
  /** A file attached to a record: an email, a note, a deal. */
  attachment: null,
} as const satisfies Record<string, { defaultLifetimeMs: number; maxLifetimeMs: number } | null>;

export type FileKind = keyof typeof FILE_KINDS;

export function isFileKind(value: string): value is FileKind {
  return Object.hasOwn(FILE_KINDS, value);
}
