import { createHash, generateKeyPairSync, type KeyObject, randomBytes, sign } from "node:crypto";

/**
 * A software WebAuthn authenticator for tests (promise A2), built on node:crypto alone so that it checks the
 * server rather than sharing its code: an ES256 key pair per credential, real authenticator data (RP id hash,
 * flags, signature counter, attested credential data with the COSE key), "packed" self-attestation signed
 * with the credential's own key (or "none"), client data with the challenge and origin, and assertions
 * signed over authenticatorData ‖ SHA-256(clientDataJSON), as a browser and a platform authenticator make
 * them. Every field a test may want wrong can be overridden per ceremony.
 */

/** The JSON a browser posts after navigator.credentials.create() (RegistrationResponseJSON). */
export interface RegistrationJSON {
  id: string;
  rawId: string;
  type: "public-key";
  response: { clientDataJSON: string; attestationObject: string; transports: string[] };
  authenticatorAttachment: "platform";
  clientExtensionResults: Record<string, never>;
}

/** The JSON a browser posts after navigator.credentials.get() (AuthenticationResponseJSON). */
export interface AssertionJSON {
  id: string;
  rawId: string;
  type: "public-key";
  response: { clientDataJSON: string; authenticatorData: string; signature: string; userHandle?: string };
  authenticatorAttachment: "platform";
  clientExtensionResults: Record<string, never>;
}

/** The parts of the server's creation options the authenticator reads. */
export interface CreationOptions {
  challenge: string;
  rp: { id?: string; name: string };
  user: { id: string; name: string; displayName: string };
}

/** The parts of the server's request options the authenticator reads. */
export interface RequestOptions {
  challenge: string;
  rpId?: string;
  allowCredentials?: { id: string }[];
}

/** A credential the authenticator holds (a resident key: it keeps the user handle). */
export interface SoftwareCredential {
  id: Buffer;
  rpId: string;
  userHandle: Buffer;
  privateKey: KeyObject;
  /** The signature counter of the last ceremony (0 at registration). */
  counter: number;
}

/** What a test can make wrong or different in one ceremony. */
export interface CeremonyOverrides {
  /** The origin written into the client data (default: the authenticator's). */
  origin?: string;
  /** The RP id whose hash goes into the authenticator data (default: the options'). */
  rpId?: string;
  /** The challenge written into the client data (default: the options'). */
  challenge?: string;
  /** The client data type (default: webauthn.create / webauthn.get). */
  type?: string;
  /** The UV flag (default true). */
  userVerified?: boolean;
  /** The UP flag (default true). */
  userPresent?: boolean;
}

export interface RegistrationOverrides extends CeremonyOverrides {
  /** Attestation statement format (default "packed" self-attestation). */
  format?: "packed" | "none";
  /** Reuse this credential id (to register a credential id the server already knows). */
  credentialId?: Buffer;
  /** Sign the packed statement with this key instead of the credential's: a forged self-attestation. */
  attestationKey?: KeyObject;
}

export interface AssertionOverrides extends CeremonyOverrides {
  /** The credential to use (default: the first one of the options' allowCredentials this authenticator holds). */
  credential?: SoftwareCredential;
  /** The signature counter to report (default: the credential's last plus one). */
  counter?: number;
  /** The user handle to return; null returns none (default: the credential's). */
  userHandle?: Buffer | null;
}

const FLAG_UP = 0x01;
const FLAG_UV = 0x04;
const FLAG_BE = 0x08;
const FLAG_BS = 0x10;
const FLAG_AT = 0x40;
/** COSE algorithm ES256 (ECDSA w/ SHA-256). */
const ES256 = -7;

type Cbor = number | string | Uint8Array | Cbor[] | Map<Cbor, Cbor>;

function cborHead(major: number, length: number): Buffer {
  if (length < 24) return Buffer.from([(major << 5) | length]);
  if (length < 0x100) return Buffer.from([(major << 5) | 24, length]);
  if (length < 0x10000) {
    const head = Buffer.alloc(3);
    head[0] = (major << 5) | 25;
    head.writeUInt16BE(length, 1);
    return head;
  }
  const head = Buffer.alloc(5);
  head[0] = (major << 5) | 26;
  head.writeUInt32BE(length, 1);
  return head;
}

/** Canonical CBOR (RFC 8949, shortest heads) of the few types WebAuthn uses: ints, bytes, text, arrays, maps. */
export function encodeCbor(value: Cbor): Buffer {
  if (typeof value === "number") {
    if (!Number.isInteger(value)) throw new TypeError("only integers are encoded");
    return value >= 0 ? cborHead(0, value) : cborHead(1, -1 - value);
  }
  if (typeof value === "string") {
    const bytes = Buffer.from(value, "utf8");
    return Buffer.concat([cborHead(3, bytes.length), bytes]);
  }
  if (value instanceof Uint8Array) return Buffer.concat([cborHead(2, value.length), value]);
  if (Array.isArray(value)) return Buffer.concat([cborHead(4, value.length), ...value.map(encodeCbor)]);
  const parts = [cborHead(5, value.size)];
  for (const [key, item] of value) parts.push(encodeCbor(key), encodeCbor(item));
  return Buffer.concat(parts);
}

const sha256 = (data: Buffer | string) => createHash("sha256").update(data).digest();
const b64url = (data: Buffer) => data.toString("base64url");

/** The credential's public key as a COSE_Key (EC2, P-256, ES256). */
function coseKey(privateKey: KeyObject): Buffer {
  const jwk = privateKey.export({ format: "jwk" });
  return encodeCbor(
    new Map<Cbor, Cbor>([
      [1, 2],
      [3, ES256],
      [-1, 1],
      [-2, Buffer.from(jwk.x as string, "base64url")],
      [-3, Buffer.from(jwk.y as string, "base64url")],
    ]),
  );
}

export interface SoftwareAuthenticatorOptions {
  /** The origin the browser runs on (default https://charter.test, the test deployment's). */
  origin?: string;
  /** The authenticator model's AAGUID (default 16 random bytes). */
  aaguid?: Buffer;
  /** A synced (multi-device) passkey: the BE and BS flags are set. */
  backedUp?: boolean;
}

export class SoftwareAuthenticator {
  readonly credentials: SoftwareCredential[] = [];
  readonly origin: string;
  readonly aaguid: Buffer;
  readonly backedUp: boolean;

  constructor(options: SoftwareAuthenticatorOptions = {}) {
    this.origin = options.origin ?? "https://charter.test";
    this.aaguid = options.aaguid ?? randomBytes(16);
    this.backedUp = options.backedUp ?? false;
  }

  private flags(overrides: CeremonyOverrides, extra = 0): number {
    let flags = extra;
    if (overrides.userPresent ?? true) flags |= FLAG_UP;
    if (overrides.userVerified ?? true) flags |= FLAG_UV;
    if (this.backedUp) flags |= FLAG_BE | FLAG_BS;
    return flags;
  }

  private clientData(type: string, challenge: string, overrides: CeremonyOverrides): Buffer {
    return Buffer.from(
      JSON.stringify({
        type: overrides.type ?? type,
        challenge: overrides.challenge ?? challenge,
        origin: overrides.origin ?? this.origin,
        crossOrigin: false,
      }),
      "utf8",
    );
  }

  /** navigator.credentials.create(): a new resident credential for the options' RP and user. */
  register(options: CreationOptions, overrides: RegistrationOverrides = {}): RegistrationJSON {
    const rpId = options.rp.id ?? new URL(this.origin).hostname;
    const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const credential: SoftwareCredential = {
      id: overrides.credentialId ?? randomBytes(32),
      rpId,
      userHandle: Buffer.from(options.user.id, "base64url"),
      privateKey,
      counter: 0,
    };
    const idLength = Buffer.alloc(2);
    idLength.writeUInt16BE(credential.id.length);
    const counter = Buffer.alloc(4);
    const authData = Buffer.concat([
      sha256(overrides.rpId ?? rpId),
      Buffer.from([this.flags(overrides, FLAG_AT)]),
      counter,
      this.aaguid,
      idLength,
      credential.id,
      coseKey(privateKey),
    ]);
    const clientDataJSON = this.clientData("webauthn.create", options.challenge, overrides);
    const format = overrides.format ?? "packed";
    const attStmt =
      format === "packed"
        ? new Map<Cbor, Cbor>([
            ["alg", ES256],
            [
              "sig",
              sign("sha256", Buffer.concat([authData, sha256(clientDataJSON)]), overrides.attestationKey ?? privateKey),
            ],
          ])
        : new Map<Cbor, Cbor>();
    const attestationObject = encodeCbor(
      new Map<Cbor, Cbor>([
        ["fmt", format],
        ["attStmt", attStmt],
        ["authData", authData],
      ]),
    );
    this.credentials.push(credential);
    return {
      id: b64url(credential.id),
      rawId: b64url(credential.id),
      type: "public-key",
      response: {
        clientDataJSON: b64url(clientDataJSON),
        attestationObject: b64url(attestationObject),
        transports: ["internal", "hybrid"],
      },
      authenticatorAttachment: "platform",
      clientExtensionResults: {},
    };
  }

  /** navigator.credentials.get(): an assertion by one of the held credentials. */
  assert(options: RequestOptions, overrides: AssertionOverrides = {}): AssertionJSON {
    const credential = overrides.credential ?? this.pick(options);
    const rpId = options.rpId ?? credential.rpId;
    credential.counter = overrides.counter ?? credential.counter + 1;
    const counter = Buffer.alloc(4);
    counter.writeUInt32BE(credential.counter);
    const authenticatorData = Buffer.concat([
      sha256(overrides.rpId ?? rpId),
      Buffer.from([this.flags(overrides)]),
      counter,
    ]);
    const clientDataJSON = this.clientData("webauthn.get", options.challenge, overrides);
    const signature = sign("sha256", Buffer.concat([authenticatorData, sha256(clientDataJSON)]), credential.privateKey);
    const userHandle = overrides.userHandle === undefined ? credential.userHandle : overrides.userHandle;
    return {
      id: b64url(credential.id),
      rawId: b64url(credential.id),
      type: "public-key",
      response: {
        clientDataJSON: b64url(clientDataJSON),
        authenticatorData: b64url(authenticatorData),
        signature: b64url(signature),
        ...(userHandle === null ? {} : { userHandle: b64url(userHandle) }),
      },
      authenticatorAttachment: "platform",
      clientExtensionResults: {},
    };
  }

  /** The credential a browser would offer: one the options allow, or any held one for a discoverable request. */
  private pick(options: RequestOptions): SoftwareCredential {
    const allowed = options.allowCredentials?.map((descriptor) => descriptor.id) ?? [];
    const credential =
      allowed.length === 0 ? this.credentials[0] : this.credentials.find((held) => allowed.includes(b64url(held.id)));
    if (!credential) throw new Error("the authenticator holds no credential these options allow");
    return credential;
  }
}
