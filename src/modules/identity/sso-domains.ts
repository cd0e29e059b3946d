import { domainToASCII } from "node:url";
import type { Selectable } from "kysely";
import type { Tx } from "../../platform/db/index.ts";
import { HttpProblem } from "../../platform/http/problem.ts";
import { uuidv7 } from "../../platform/ids.ts";
import type { IdentityDeps } from "./deps.ts";
import type { SsoChangeContext } from "./sso-configurations.ts";
import type { SsoDomainsTable } from "./sso-schema.ts";
import { newToken } from "./tokens.ts";

/**
 * The email domains a tenant vouches for (promise A3): only an address of a domain the tenant proved it controls
 * may join it just in time through its provider. A domain is proven by a DNS TXT record
 * `charter-verification=<token>` at `_charter.<domain>`, looked up through deps.dns when the admin asks.
 */

export const TXT_VALUE_PREFIX = "charter-verification=";
const RECORD_LABEL = "_charter";
const DOMAIN = /^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?$/;
/** What the resolver says when a name has no TXT record at all: the record is missing, not the DNS broken. */
const NO_RECORD = new Set(["ENOTFOUND", "ENODATA", "NXDOMAIN"]);

type Row = Selectable<SsoDomainsTable>;

export interface SsoDomain {
  id: string;
  domain: string;
  createdAt: Date;
  verifiedAt: Date | null;
  /** The record to publish. */
  record: { name: string; type: "TXT"; value: string };
}

function toDomain(row: Row): SsoDomain {
  return {
    id: row.id,
    domain: row.domain,
    createdAt: row.created_at,
    verifiedAt: row.verified_at,
    record: {
      name: `${RECORD_LABEL}.${row.domain}`,
      type: "TXT",
      value: `${TXT_VALUE_PREFIX}${row.verification_token}`,
    },
  };
}

/**
 * A domain in the form it is stored and compared in: lower case, ASCII (punycode), no trailing dot. Undefined
 * for anything that is not a domain name of at least two labels.
 */
export function normaliseDomain(input: string): string | undefined {
  const ascii = domainToASCII(input.trim().replace(/\.$/, ""));
  return ascii.length <= 253 && DOMAIN.test(ascii) ? ascii : undefined;
}

/** The domain part of a normalised address, in the form domains are stored. */
export function domainOfEmail(email: string): string | undefined {
  const at = email.lastIndexOf("@");
  return at < 0 ? undefined : normaliseDomain(email.slice(at + 1));
}

export async function addSsoDomain(
  tx: Tx,
  deps: Pick<IdentityDeps, "audit" | "clock">,
  change: SsoChangeContext,
  input: string,
): Promise<SsoDomain> {
  const domain = normaliseDomain(input);
  if (!domain) throw new HttpProblem("validation", "not a domain name (e.g. example.com)");
  const now = deps.clock.now();
  const id = uuidv7(now.getTime());
  const row = await tx
    .insertInto("sso_domains")
    .values({
      tenant_id: change.tenantId,
      id,
      domain,
      verification_token: newToken(),
      created_at: now,
    })
    .onConflict((conflict) => conflict.columns(["tenant_id", "domain"]).doNothing())
    .returningAll()
    .executeTakeFirst();
  if (!row) throw new HttpProblem("conflict", "this organization has claimed this domain already");
  await deps.audit.record(tx, {
    tenantId: change.tenantId,
    stream: "changes",
    actor: change.actor,
    action: "sso.domain-added",
    target: { type: "sso-domain", id },
    requestId: change.requestId,
  });
  return toDomain(row);
}

export async function listSsoDomains(tx: Tx, tenantId: string): Promise<SsoDomain[]> {
  const rows = await tx.selectFrom("sso_domains").selectAll().where("tenant_id", "=", tenantId).orderBy("id").execute();
  return rows.map(toDomain);
}

/** Whether the tenant verified the domain (the condition of just-in-time membership). */
export async function isVerifiedDomain(tx: Tx, tenantId: string, domain: string): Promise<boolean> {
  const row = await tx
    .selectFrom("sso_domains")
    .select("id")
    .where("tenant_id", "=", tenantId)
    .where("domain", "=", domain)
    .where("verified_at", "is not", null)
    .executeTakeFirst();
  return row !== undefined;
}

/** Whether the TXT records hold the value (a long record comes as several strings, joined here). */
function holds(records: readonly string[][], value: string): boolean {
  return records.some((strings) => strings.join("").trim() === value);
}

/**
 * Looks the domain's TXT record up and marks the domain verified when it holds the token (audited). The DNS is
 * asked outside any transaction. A domain verified already stays so and is answered as it is. Refuses with
 * "conflict" when the record is not there (yet), "unavailable" when the DNS cannot be asked.
 */
export async function verifySsoDomain(
  deps: Pick<IdentityDeps, "db" | "dns" | "audit" | "clock">,
  change: SsoChangeContext & { domainId: string },
): Promise<SsoDomain | undefined> {
  const { tenantId, domainId } = change;
  const inTenant = <T>(fn: (tx: Tx) => Promise<T>) =>
    deps.db.withTenant({ tenantId, actorId: change.actor.id ?? undefined, requestId: change.requestId }, fn);
  const found = await inTenant((tx) =>
    tx
      .selectFrom("sso_domains")
      .selectAll()
      .where("tenant_id", "=", tenantId)
      .where("id", "=", domainId)
      .executeTakeFirst(),
  );
  if (!found) return undefined;
  const domain = toDomain(found);
  if (domain.verifiedAt) return domain;
  let records: string[][];
  try {
    records = await deps.dns.resolveTxt(domain.record.name);
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    if (typeof code === "string" && NO_RECORD.has(code)) records = [];
    else throw new HttpProblem("unavailable", "the DNS could not be asked; try again later");
  }
  if (!holds(records, domain.record.value)) {
    throw new HttpProblem(
      "conflict",
      `no TXT record "${domain.record.value}" was found at ${domain.record.name}; publish it and try again`,
    );
  }
  return inTenant(async (tx) => {
    const row = await tx
      .updateTable("sso_domains")
      .set({ verified_at: deps.clock.now() })
      .where("tenant_id", "=", tenantId)
      .where("id", "=", domainId)
      .where("verified_at", "is", null)
      .returningAll()
      .executeTakeFirst();
    if (!row) {
      // Removed, or verified by a concurrent request, since it was read.
      const current = await tx
        .selectFrom("sso_domains")
        .selectAll()
        .where("tenant_id", "=", tenantId)
        .where("id", "=", domainId)
        .executeTakeFirst();
      return current && toDomain(current);
    }
    await deps.audit.record(tx, {
      tenantId,
      stream: "changes",
      actor: change.actor,
      action: "sso.domain-verified",
      target: { type: "sso-domain", id: domainId },
      requestId: change.requestId,
    });
    return toDomain(row);
  });
}

/** Removes a domain claim: its addresses no longer join just in time. False when there was none. */
export async function removeSsoDomain(
  tx: Tx,
  deps: Pick<IdentityDeps, "audit">,
  change: SsoChangeContext & { domainId: string },
): Promise<boolean> {
  const { tenantId, domainId } = change;
  const deleted = await tx
    .deleteFrom("sso_domains")
    .where("tenant_id", "=", tenantId)
    .where("id", "=", domainId)
    .returning("verified_at")
    .executeTakeFirst();
  if (!deleted) return false;
  await deps.audit.record(tx, {
    tenantId,
    stream: "changes",
    actor: change.actor,
    action: "sso.domain-removed",
    target: { type: "sso-domain", id: domainId },
    details: { wasVerified: deleted.verified_at !== null },
    requestId: change.requestId,
  });
  return true;
}
