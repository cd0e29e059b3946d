import { createHmac } from "node:crypto";
import { type CountryCode, isSupportedCountry, parsePhoneNumberFromString } from "libphonenumber-js/max";
import { assertKey, encodeFields } from "./aead.ts";
import { deriveKey } from "./derive.ts";
import { MasterKey } from "./master-key.ts";

/**
 * Keyed blind indexes for equality search over encrypted columns (promise E5). The index of a value
 * is HMAC-SHA256 under a per-scope index key of its normalised form: equal inputs find each other, and
 * without the key the index reveals nothing, not even across tenants, whose index keys differ.
 */

export const BLIND_INDEX_KINDS = ["email", "phone"] as const;
export type BlindIndexKind = (typeof BLIND_INDEX_KINDS)[number];
export type BlindIndexScope = "platform" | { tenantId: string };

/** An email address or phone number cannot be normalised. The message never contains the input. */
export class NormalisationError extends Error {
  override name = "NormalisationError";
  readonly kind: BlindIndexKind;

  constructor(kind: BlindIndexKind) {
    super(kind === "email" ? "not a valid email address" : "not a valid phone number");
    this.kind = kind;
  }
}

const DOMAIN = "charter/blind-index";
const VERSION = "1";
const E164 = /^\+[1-9][0-9]{1,14}$/;

/**
 * Trims, lowercases and NFC-normalises an email address. Dots and "+tag" suffixes are kept: whether
 * they matter is up to each mail provider ("a.b@x" and "ab@x" are different mailboxes almost
 * everywhere but Gmail), so stripping them would make one person's search find another's record.
 * Lowercasing the local part is the one liberty taken: RFC 5321 lets it be case-sensitive, but no
 * mainstream provider treats it so and people type it inconsistently.
 */
export function normaliseEmail(input: string): string {
  if (typeof input !== "string" || !input.isWellFormed()) throw new NormalisationError("email");
  const email = input.trim().normalize("NFC").toLowerCase().normalize("NFC");
  const at = email.lastIndexOf("@");
  if (at <= 0 || at === email.length - 1) throw new NormalisationError("email");
  return email;
}

/**
 * A phone number in E.164 ("+442079460958"), read in any common notation; numbers without a country
 * code are read as numbers of `defaultRegion`. Validated against the full metadata, so a number with
 * the right length but an unallocated prefix is refused. An extension is dropped, as E.164 has none:
 * searching for a switchboard number finds its extensions.
 */
export function normalisePhone(input: string, defaultRegion: CountryCode): string {
  if (!isSupportedCountry(defaultRegion)) throw new TypeError("the default region must be a supported country code");
  if (typeof input !== "string") throw new NormalisationError("phone");
  // extract: false refuses text around the number instead of picking a number out of it.
  const phone = parsePhoneNumberFromString(input, { defaultCountry: defaultRegion, extract: false });
  if (!phone?.isValid()) throw new NormalisationError("phone");
  return phone.number;
}

/**
 * The blind index of an already normalised value. The kind is part of the MAC input, so an email and
 * a phone number never share an index. A value that is not in normal form is refused: indexing it as
 * given would silently never match.
 */
export function blindIndex(indexKey: Buffer, kind: BlindIndexKind, normalised: string): Buffer {
  assertKey(indexKey, "a blind index key");
  const normal = kind === "email" ? isNormalEmail(normalised) : typeof normalised === "string" && E164.test(normalised);
  if (!normal) throw new TypeError(`the ${kind} must be normalised before indexing`);
  return createHmac("sha256", indexKey)
    .update(encodeFields([DOMAIN, VERSION, kind, normalised]))
    .digest();
}

function isNormalEmail(value: string): boolean {
  try {
    return normaliseEmail(value) === value;
  } catch {
    return false;
  }
}

/** The index key of a scope, derived from `parent` (the master key) as "blind-index/<scope>". */
export function blindIndexKey(parent: Buffer | MasterKey, scope: BlindIndexScope): Buffer {
  let label: string;
  if (scope === "platform") label = "blind-index/platform";
  else if (typeof scope?.tenantId === "string" && scope.tenantId !== "") label = `blind-index/tenant/${scope.tenantId}`;
  else throw new TypeError("a blind index scope needs a non-empty tenantId");
  if (!(parent instanceof MasterKey)) {
    assertKey(parent, "a blind index parent key");
    return deriveKey(parent, label);
  }
  const bytes = parent.bytes();
  try {
    return deriveKey(bytes, label);
  } finally {
    bytes.fill(0);
  }
}
