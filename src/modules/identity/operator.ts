import { HttpProblem } from "../../platform/http/problem.ts";
import { uuidv7 } from "../../platform/ids.ts";
import type { IdentityDeps } from "./deps.ts";
import { pageLink } from "./links.ts";
import { assertStrongPassword } from "./passwords.ts";
import { hashToken, isTokenShaped, newToken } from "./tokens.ts";
import { createUser, emailIndexOf, findVerifiedUserByEmail } from "./users.ts";

/**
 * The first operator is created through a one-time link shown on the server's terminal at start-up (never
 * written to a log). Only the SHA-256 of its token is stored, so a link cannot be shown twice: each start
 * without an operator replaces the unused links with a fresh one, valid for SETUP_LINK_MINUTES and once.
 */

export const SETUP_LINK_MINUTES = 60;

/**
 * The setup link to print on the terminal, or undefined once an operator exists. Whoever can read the
 * server's terminal runs the platform: that is what the link proves.
 */
export async function ensureOperatorSetupLink(
  deps: Pick<IdentityDeps, "db" | "clock" | "config">,
): Promise<string | undefined> {
  const token = newToken();
  const created = await deps.db.withPlatform(async (tx) => {
    const operator = await tx.selectFrom("operators").select("user_id").limit(1).executeTakeFirst();
    if (operator) return false;
    const now = deps.clock.now();
    await tx.deleteFrom("operator_setup_tokens").where("used_at", "is", null).execute();
    await tx
      .insertInto("operator_setup_tokens")
      .values({
        id: uuidv7(now.getTime()),
        token_hash: hashToken(token),
        created_at: now,
        expires_at: new Date(now.getTime() + SETUP_LINK_MINUTES * 60_000),
      })
      .execute();
    return true;
  });
  return created ? pageLink(deps.config.publicUrl, "setup", token) : undefined;
}

export interface OperatorSetup {
  token: string;
  email: string;
  displayName: string;
  password: string;
  requestId: string;
}

/**
 * Redeems the setup link: creates the operator's account and its operators row, and uses the link up. The
 * account's address counts as verified without a mail round trip: the link proves control of the server,
 * which is more than control of a mailbox, and at first start there may be no mail transport yet. The token
 * is checked before the password is hashed, so the costly hash cannot be set off without one. Any refused
 * token (unknown, used, expired, or an operator exists already) answers the same 404.
 */
export async function setupOperator(
  deps: Pick<IdentityDeps, "db" | "clock" | "keyRing" | "audit" | "passwords">,
  setup: OperatorSetup,
): Promise<{ userId: string }> {
  const notFound = () => new HttpProblem("not-found", "this setup link does not exist, was used or has expired");
  if (!isTokenShaped(setup.token)) throw notFound();
  await assertStrongPassword(setup.password, { email: setup.email, displayName: setup.displayName });
  const email = emailIndexOf(deps.keyRing, setup.email);
  return deps.db.withPlatform(
    async (tx) => {
      const now = deps.clock.now();
      const link = await tx
        .selectFrom("operator_setup_tokens")
        .select(["id", "expires_at", "used_at"])
        .where("token_hash", "=", hashToken(setup.token))
        .forUpdate()
        .executeTakeFirst();
      if (!link || link.used_at !== null || link.expires_at.getTime() <= now.getTime()) throw notFound();
      if (await tx.selectFrom("operators").select("user_id").limit(1).executeTakeFirst()) throw notFound();
      if (await findVerifiedUserByEmail(tx, email.index)) {
        throw new HttpProblem("conflict", "an account with this address exists; use another address for the operator");
      }
      const user = await createUser(tx, deps.keyRing, now, {
        email,
        displayName: setup.displayName,
        passwordHash: await deps.passwords.hash(setup.password),
        verifiedAt: now,
      });
      await tx.insertInto("operators").values({ user_id: user.id, created_at: now }).execute();
      await tx
        .updateTable("operator_setup_tokens")
        .set({ used_at: now, used_by: user.id })
        .where("id", "=", link.id)
        .execute();
      await deps.audit.record(tx, {
        tenantId: null,
        stream: "security",
        actor: { kind: "operator", id: user.id },
        action: "auth.operator-created",
        target: { type: "user", id: user.id },
        details: {},
        requestId: setup.requestId,
      });
      return { userId: user.id };
    },
    { requestId: setup.requestId },
  );
}
