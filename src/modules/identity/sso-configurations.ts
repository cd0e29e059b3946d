import type { Selectable, Updateable } from "kysely";
import type { Actor } from "../../platform/audit/event.ts";
import type { Binding } from "../../platform/crypto/envelope.ts";
import type { Tx } from "../../platform/db/index.ts";
import { uuidv7 } from "../../platform/ids.ts";
import type { IdentityDeps } from "./deps.ts";
import type { SsoConfigurationsTable } from "./sso-schema.ts";

/**
 * A tenant's OpenID Connect providers (promise A3). The client secret is sealed under the tenant's key, opened
 * only to call the provider's token endpoint, and never answered: a configuration says only that it has one.
 * Every change is audited on the tenant's "changes" chain, naming the fields changed, never their values.
 */

export const DEFAULT_EMAIL_CLAIM = "email";
export const DEFAULT_NAME_CLAIM = "name";

type Row = Selectable<SsoConfigurationsTable>;

export interface SsoConfiguration {
  id: string;
  tenantId: string;
  name: string;
  issuer: string;
  clientId: string;
  emailClaim: string;
  nameClaim: string;
  mfaAmrValues: string[];
  enabled: boolean;
  createdAt: Date;
  updatedAt: Date;
}

/** A configuration with its secret opened: only for the sign-in flow, never for an answer. */
export interface SsoClient extends SsoConfiguration {
  clientSecret: string;
}

export interface SsoConfigurationFields {
  name: string;
  issuer: string;
  clientId: string;
  clientSecret: string;
  emailClaim: string;
  nameClaim: string;
  mfaAmrValues: string[];
  enabled: boolean;
}

/** Who changes a configuration, and the request, for the audit event. */
export interface SsoChangeContext {
  tenantId: string;
  actor: Actor;
  requestId: string;
}

const secretBinding = (tenantId: string, id: string): Binding => ({
  tenantId,
  table: "sso_configurations",
  column: "client_secret",
  rowId: id,
});

const COLUMNS = [
  "id",
  "tenant_id",
  "name",
  "issuer",
  "client_id",
  "email_claim",
  "name_claim",
  "mfa_amr_values",
  "enabled",
  "created_at",
  "updated_at",
] as const;

function toConfiguration(row: Omit<Row, "client_secret">): SsoConfiguration {
  return {
    id: row.id,
    tenantId: row.tenant_id,
    name: row.name,
    issuer: row.issuer,
    clientId: row.client_id,
    emailClaim: row.email_claim,
    nameClaim: row.name_claim,
    mfaAmrValues: row.mfa_amr_values,
    enabled: row.enabled,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

/** The one redirect URI of a configuration (one per configuration, so an answer cannot cross providers). */
export function ssoRedirectUri(publicUrl: URL, configurationId: string): string {
  const base = publicUrl.href.endsWith("/") ? publicUrl.href : `${publicUrl.href}/`;
  return new URL(`api/v1/sso/callback/${configurationId}`, base).href;
}

export async function createSsoConfiguration(
  tx: Tx,
  deps: Pick<IdentityDeps, "keyRing" | "audit" | "clock">,
  change: SsoChangeContext,
  fields: SsoConfigurationFields,
): Promise<SsoConfiguration> {
  const { tenantId } = change;
  const now = deps.clock.now();
  const id = uuidv7(now.getTime());
  const row = await tx
    .insertInto("sso_configurations")
    .values({
      tenant_id: tenantId,
      id,
      name: fields.name,
      issuer: fields.issuer,
      client_id: fields.clientId,
      client_secret: await deps.keyRing.encrypt(
        tx,
        { scope: "tenant", tenantId },
        fields.clientSecret,
        secretBinding(tenantId, id),
      ),
      email_claim: fields.emailClaim,
      name_claim: fields.nameClaim,
      mfa_amr_values: fields.mfaAmrValues,
      enabled: fields.enabled,
      created_at: now,
      updated_at: now,
    })
    .returning(COLUMNS)
    .executeTakeFirstOrThrow();
  await deps.audit.record(tx, {
    tenantId,
    stream: "changes",
    actor: change.actor,
    action: "sso.configuration-created",
    target: { type: "sso-configuration", id },
    details: { enabled: fields.enabled },
    requestId: change.requestId,
  });
  return toConfiguration(row);
}

/** The tenant's configurations, oldest first (ids are UUIDv7). */
export async function listSsoConfigurations(tx: Tx, tenantId: string): Promise<SsoConfiguration[]> {
  const rows = await tx
    .selectFrom("sso_configurations")
    .select(COLUMNS)
    .where("tenant_id", "=", tenantId)
    .orderBy("id")
    .execute();
  return rows.map(toConfiguration);
}

export async function findSsoConfiguration(
  tx: Tx,
  tenantId: string,
  configurationId: string,
): Promise<SsoConfiguration | undefined> {
  const row = await tx
    .selectFrom("sso_configurations")
    .select(COLUMNS)
    .where("tenant_id", "=", tenantId)
    .where("id", "=", configurationId)
    .executeTakeFirst();
  return row && toConfiguration(row);
}

/** The configuration with its client secret opened, for the sign-in flow; undefined when there is none. */
export async function openSsoClient(
  tx: Tx,
  deps: Pick<IdentityDeps, "keyRing">,
  tenantId: string,
  configurationId: string,
): Promise<SsoClient | undefined> {
  const row = await tx
    .selectFrom("sso_configurations")
    .select([...COLUMNS, "client_secret"])
    .where("tenant_id", "=", tenantId)
    .where("id", "=", configurationId)
    .executeTakeFirst();
  if (!row) return undefined;
  const clientSecret = await deps.keyRing.decrypt(tx, row.client_secret, secretBinding(tenantId, row.id));
  return { ...toConfiguration(row), clientSecret };
}

/**
 * Changes the given fields (a new client secret replaces the old one); undefined when there is no such
 * configuration. Changing the issuer orphans the identities linked under the old one: they are keyed by issuer.
 */
export async function updateSsoConfiguration(
  tx: Tx,
  deps: Pick<IdentityDeps, "keyRing" | "audit" | "clock">,
  change: SsoChangeContext & { configurationId: string },
  fields: Partial<SsoConfigurationFields>,
): Promise<SsoConfiguration | undefined> {
  const { tenantId, configurationId } = change;
  const now = deps.clock.now();
  const set: Updateable<SsoConfigurationsTable> = { updated_at: now };
  if (fields.name !== undefined) set.name = fields.name;
  if (fields.issuer !== undefined) set.issuer = fields.issuer;
  if (fields.clientId !== undefined) set.client_id = fields.clientId;
  if (fields.clientSecret !== undefined) {
    set.client_secret = await deps.keyRing.encrypt(
      tx,
      { scope: "tenant", tenantId },
      fields.clientSecret,
      secretBinding(tenantId, configurationId),
    );
  }
  if (fields.emailClaim !== undefined) set.email_claim = fields.emailClaim;
  if (fields.nameClaim !== undefined) set.name_claim = fields.nameClaim;
  if (fields.mfaAmrValues !== undefined) set.mfa_amr_values = fields.mfaAmrValues;
  if (fields.enabled !== undefined) set.enabled = fields.enabled;
  const row = await tx
    .updateTable("sso_configurations")
    .set(set)
    .where("tenant_id", "=", tenantId)
    .where("id", "=", configurationId)
    .returning(COLUMNS)
    .executeTakeFirst();
  if (!row) return undefined;
  await deps.audit.record(tx, {
    tenantId,
    stream: "changes",
    actor: change.actor,
    action: "sso.configuration-updated",
    target: { type: "sso-configuration", id: configurationId },
    details: { changed: changedFields(fields) },
    requestId: change.requestId,
  });
  return toConfiguration(row);
}

/** The names of the fields a change sets, sorted (never their values: one of them is a secret). */
function changedFields(fields: Partial<SsoConfigurationFields>): string[] {
  return Object.entries(fields)
    .filter(([, value]) => value !== undefined)
    .map(([name]) => name)
    .sort();
}

/** Deletes a configuration and the identities linked through it; false when there was none. */
export async function deleteSsoConfiguration(
  tx: Tx,
  deps: Pick<IdentityDeps, "audit">,
  change: SsoChangeContext & { configurationId: string },
): Promise<boolean> {
  const { tenantId, configurationId } = change;
  const identities = await tx
    .deleteFrom("sso_identities")
    .where("tenant_id", "=", tenantId)
    .where("configuration_id", "=", configurationId)
    .executeTakeFirst();
  const deleted = await tx
    .deleteFrom("sso_configurations")
    .where("tenant_id", "=", tenantId)
    .where("id", "=", configurationId)
    .executeTakeFirst();
  if (Number(deleted.numDeletedRows) === 0) return false;
  await deps.audit.record(tx, {
    tenantId,
    stream: "changes",
    actor: change.actor,
    action: "sso.configuration-deleted",
    target: { type: "sso-configuration", id: configurationId },
    details: { identitiesDeleted: Number(identities.numDeletedRows) },
    requestId: change.requestId,
  });
  return true;
}
