export { type BlobStore, createLocalBlobStore } from "./blob-store.ts";
export { FileTooLargeError } from "./cipher.ts";
export { filesInventory } from "./inventory.ts";
export { FILE_KINDS, type FileKind } from "./kinds.ts";
export {
  createFileStore,
  DEFAULT_MAX_FILE_BYTES,
  type FileContent,
  type FileInfo,
  FileIntegrityError,
  FileNotFoundError,
  type FileOwner,
  type FileRef,
  type FileStore,
  type FileStoreOptions,
  type NewFile,
  type OpenedFile,
  type StagedFile,
} from "./store.ts";
export {
  type ExpiryReport,
  expirePlatformFiles,
  expireTenantFiles,
  type OrphanReport,
  type SweepDeps,
  sweepOrphanBlobs,
} from "./sweeps.ts";
