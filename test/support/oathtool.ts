import { execFile } from "node:child_process";
import { promisify } from "node:util";

/**
 * The independent TOTP implementation the tests sign in with (promise A2's proof): Debian's `oathtool`
 * (OATH Toolkit), never the library under test. CI installs it (.ci/run); a missing binary fails loudly.
 */

const run = promisify(execFile);

/** The base32 secret of an otpauth:// URI, as an authenticator app reads it from the QR code. */
export function secretOfUri(uri: string): string {
  const parsed = new URL(uri);
  if (parsed.protocol !== "otpauth:" || parsed.host !== "totp") throw new Error(`not a TOTP URI: ${uri}`);
  const secret = parsed.searchParams.get("secret");
  if (!secret) throw new Error("the otpauth:// URI has no secret");
  return secret;
}

/** The six-digit code `oathtool` computes for the base32 secret at the given moment (30 s steps, SHA-1). */
export async function oathtoolCode(secret: string, at: Date): Promise<string> {
  const { stdout } = await run("oathtool", ["--totp", "--base32", "--now", at.toISOString(), secret]);
  const code = stdout.trim();
  if (!/^\d{6}$/.test(code)) throw new Error(`oathtool printed ${JSON.stringify(code)}, not a code`);
  return code;
}
