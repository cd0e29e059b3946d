import type { AuthenticationResponseJSON, RegistrationResponseJSON } from "@simplewebauthn/server";
import { z } from "zod";

/**
 * The WebAuthn JSON of the passkey routes (promise A2): the options the server hands to
 * navigator.credentials.create()/get() (as @simplewebauthn/browser's startRegistration/startAuthentication
 * take them), and the responses the browser posts back, bounded so that nothing oversized reaches the
 * verifier.
 */

const base64url = (max: number) =>
  z
    .string()
    .regex(/^[A-Za-z0-9_-]*$/, "base64url")
    .max(max);

/** WebAuthn allows credential ids up to 1023 bytes: 1364 characters of base64url. */
const credentialId = base64url(1364).min(1);

const credentialDescriptor = z.object({
  id: z.string(),
  type: z.string(),
  transports: z.array(z.string()).optional(),
});

export const creationOptions = z
  .object({
    rp: z.object({ id: z.string().optional(), name: z.string() }),
    user: z.object({ id: z.string(), name: z.string(), displayName: z.string() }),
    challenge: z.string(),
    pubKeyCredParams: z.array(z.object({ alg: z.number().int(), type: z.string() })),
    timeout: z.number().int().optional(),
    excludeCredentials: z.array(credentialDescriptor).optional(),
    authenticatorSelection: z
      .object({
        authenticatorAttachment: z.string().optional(),
        requireResidentKey: z.boolean().optional(),
        residentKey: z.string().optional(),
        userVerification: z.string().optional(),
      })
      .optional(),
    hints: z.array(z.string()).optional(),
    attestation: z.string().optional(),
    attestationFormats: z.array(z.string()).optional(),
    extensions: z.record(z.string(), z.unknown()).optional(),
  })
  .meta({ id: "PasskeyCreationOptions", description: "For navigator.credentials.create() (publicKey)" });

export const requestOptions = z
  .object({
    challenge: z.string(),
    timeout: z.number().int().optional(),
    rpId: z.string().optional(),
    allowCredentials: z.array(credentialDescriptor).optional(),
    userVerification: z.string().optional(),
    hints: z.array(z.string()).optional(),
    extensions: z.record(z.string(), z.unknown()).optional(),
  })
  .meta({ id: "PasskeyRequestOptions", description: "For navigator.credentials.get() (publicKey)" });

const attachment = z.enum(["platform", "cross-platform"]).optional();
/** Extension outputs are accepted and ignored: no extension is asked for. */
const extensionResults = z.record(z.string(), z.unknown()).optional();

export const registrationResponse = z
  .object({
    id: credentialId,
    rawId: credentialId,
    type: z.literal("public-key"),
    response: z.object({
      clientDataJSON: base64url(4096),
      attestationObject: base64url(64 * 1024),
      authenticatorData: base64url(64 * 1024).optional(),
      transports: z.array(z.string().max(32)).max(16).optional(),
      publicKeyAlgorithm: z.number().int().optional(),
      publicKey: base64url(4096).optional(),
    }),
    authenticatorAttachment: attachment,
    clientExtensionResults: extensionResults,
  })
  .meta({ id: "PasskeyRegistrationResponse", description: "What navigator.credentials.create() returned, as JSON" });

export const assertionResponse = z
  .object({
    id: credentialId,
    rawId: credentialId,
    type: z.literal("public-key"),
    response: z.object({
      clientDataJSON: base64url(4096),
      authenticatorData: base64url(4096),
      signature: base64url(2048),
      userHandle: base64url(128).optional(),
    }),
    authenticatorAttachment: attachment,
    clientExtensionResults: extensionResults,
  })
  .meta({ id: "PasskeyAssertion", description: "What navigator.credentials.get() returned, as JSON" });

export type PasskeyAssertion = z.infer<typeof assertionResponse>;

/** A passkey's assertion as a second factor beside typed codes (a password reset's `secondFactor`). */
export const passkeyAnswer = z.strictObject({ passkey: assertionResponse });

/** The library's shape of a posted registration (extension outputs dropped: none was asked for). */
export function toRegistrationJSON(body: z.infer<typeof registrationResponse>): RegistrationResponseJSON {
  const { clientExtensionResults: _ignored, authenticatorAttachment, ...rest } = body;
  return { ...rest, ...(authenticatorAttachment ? { authenticatorAttachment } : {}), clientExtensionResults: {} };
}

/** The library's shape of a posted assertion (extension outputs dropped: none was asked for). */
export function toAssertionJSON(body: PasskeyAssertion): AuthenticationResponseJSON {
  const { clientExtensionResults: _ignored, authenticatorAttachment, ...rest } = body;
  return { ...rest, ...(authenticatorAttachment ? { authenticatorAttachment } : {}), clientExtensionResults: {} };
}

/** A passkey's name: one line of printable text, shown only to its owner. */
export const passkeyName = z
  .string()
  .trim()
  .min(1)
  .max(64)
  .regex(/^[^\p{Cc}\p{Cf}\p{Zl}\p{Zp}]+$/u, "a passkey name is one line of printable text");

export const passkeySummary = z
  .object({
    id: z.uuid(),
    name: z.string(),
    deviceType: z.enum(["singleDevice", "multiDevice"]).describe("multiDevice: a synced passkey"),
    backedUp: z.boolean(),
    transports: z.array(z.string()),
    createdAt: z.iso.datetime(),
    lastUsedAt: z.iso.datetime().nullable(),
  })
  .meta({ id: "Passkey" });
