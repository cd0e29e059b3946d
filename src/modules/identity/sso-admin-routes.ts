import { z } from "zod";
import type { Tx } from "../../platform/db/index.ts";
import { HttpProblem, problemSchema } from "../../platform/http/problem.ts";
import { type AnyRoute, defineRoute, type RouteRequest } from "../../platform/http/routes.ts";
import type { IdentityDeps } from "./deps.ts";
import { tenantActorOf } from "./member-routes.ts";
import { tenantAuditActor } from "./memberships.ts";
import { requireRecentAuthentication } from "./sessions.ts";
import {
  createSsoConfiguration,
  DEFAULT_EMAIL_CLAIM,
  DEFAULT_NAME_CLAIM,
  deleteSsoConfiguration,
  findSsoConfiguration,
  listSsoConfigurations,
  type SsoChangeContext,
  type SsoConfiguration,
  ssoRedirectUri,
  updateSsoConfiguration,
} from "./sso-configurations.ts";
import { addSsoDomain, listSsoDomains, removeSsoDomain, type SsoDomain, verifySsoDomain } from "./sso-domains.ts";

/**
 * A tenant's single sign-on settings (promise A3), for its admins: OpenID providers (the client secret goes in
 * and never comes out) and the email domains the tenant verified. Changes need a person who authenticated
 * recently: never an API key.
 */

const TAGS = ["sso"];
const tenantParams = z.object({ tenantId: z.uuid() });
const configurationParams = z.object({ tenantId: z.uuid(), configurationId: z.uuid() });
const domainParams = z.object({ tenantId: z.uuid(), domainId: z.uuid() });

/** The issuer identifier: https, no credentials, query or fragment (OpenID Connect Discovery 1.0, 2). */
const ISSUER = /^https:\/\/[^/?#@]+(\/[^?#]*)?$/;
const issuer = z
  .string()
  .max(500)
  .refine((value) => ISSUER.test(value) && URL.canParse(value), "an https URL without query, fragment or credentials")
  .describe("The provider's issuer identifier, e.g. https://login.example.com");
const claimName = z.string().regex(/^[A-Za-z0-9_.:-]{1,64}$/, "a claim name");
const amrValues = z
  .array(z.string().regex(/^[\x21-\x7e]{1,64}$/, "an amr value"))
  .max(20)
  .describe("The provider's `amr` values that count as multi-factor in this organization (e.g. mfa, otp, hwk)");

const configurationFields = {
  name: z.string().trim().min(1).max(100).describe("What the sign-in button names the provider"),
  issuer,
  clientId: z.string().min(1).max(255),
  clientSecret: z.string().min(1).max(1000).describe("Stored encrypted and never answered"),
  emailClaim: claimName.describe("The claim that carries the address"),
  nameClaim: claimName.describe("The claim that carries the display name"),
  mfaAmrValues: amrValues,
  enabled: z.boolean(),
};

const newConfiguration = z
  .object({
    ...configurationFields,
    emailClaim: configurationFields.emailClaim.default(DEFAULT_EMAIL_CLAIM),
    nameClaim: configurationFields.nameClaim.default(DEFAULT_NAME_CLAIM),
    mfaAmrValues: amrValues.default([]),
    enabled: z.boolean().default(true),
  })
  .strict();

const configurationChanges = z
  .object({
    name: configurationFields.name.optional(),
    issuer: issuer.optional(),
    clientId: configurationFields.clientId.optional(),
    clientSecret: configurationFields.clientSecret.optional(),
    emailClaim: claimName.optional(),
    nameClaim: claimName.optional(),
    mfaAmrValues: amrValues.optional(),
    enabled: z.boolean().optional(),
  })
  .strict();

const configurationSchema = z
  .object({
    id: z.uuid(),
    name: z.string(),
    issuer: z.string(),
    clientId: z.string(),
    clientSecretSet: z.literal(true).describe("The secret is stored (it is never answered)"),
    emailClaim: z.string(),
    nameClaim: z.string(),
    mfaAmrValues: z.array(z.string()),
    enabled: z.boolean(),
    redirectUri: z.url().describe("Register this redirect URI at the provider: it serves this configuration only"),
    signInUrl: z.url().describe("Where a sign-in through this provider starts"),
    createdAt: z.iso.datetime(),
    updatedAt: z.iso.datetime(),
  })
  .meta({ id: "SsoConfiguration" });

const domainSchema = z
  .object({
    id: z.uuid(),
    domain: z.string(),
    verified: z.boolean(),
    verifiedAt: z.iso.datetime().nullable(),
    createdAt: z.iso.datetime(),
    record: z
      .object({ name: z.string(), type: z.literal("TXT"), value: z.string() })
      .describe("The DNS record that proves the organization controls the domain"),
  })
  .meta({ id: "SsoDomain" });

/** Where a sign-in through a configuration starts (the web app's button links here). */
export function ssoStartUrl(publicUrl: URL, tenantId: string, configurationId: string): string {
  const base = publicUrl.href.endsWith("/") ? publicUrl.href : `${publicUrl.href}/`;
  return new URL(`api/v1/tenants/${tenantId}/sso/${configurationId}/start`, base).href;
}

export function ssoAdminRoutes(deps: IdentityDeps): AnyRoute[] {
  const { db, config } = deps;
  const publicUrl = config.publicUrl;

  const toConfiguration = (c: SsoConfiguration): z.infer<typeof configurationSchema> => ({
    id: c.id,
    name: c.name,
    issuer: c.issuer,
    clientId: c.clientId,
    clientSecretSet: true,
    emailClaim: c.emailClaim,
    nameClaim: c.nameClaim,
    mfaAmrValues: c.mfaAmrValues,
    enabled: c.enabled,
    redirectUri: ssoRedirectUri(publicUrl, c.id),
    signInUrl: ssoStartUrl(publicUrl, c.tenantId, c.id),
    createdAt: c.createdAt.toISOString(),
    updatedAt: c.updatedAt.toISOString(),
  });
  const toDomain = (d: SsoDomain): z.infer<typeof domainSchema> => ({
    id: d.id,
    domain: d.domain,
    verified: d.verifiedAt !== null,
    verifiedAt: d.verifiedAt?.toISOString() ?? null,
    createdAt: d.createdAt.toISOString(),
    record: d.record,
  });

  const reading = (request: RouteRequest<unknown, unknown, unknown>) => {
    const { tenantId, actor } = tenantActorOf(request);
    return <T>(fn: (tx: Tx) => Promise<T>) =>
      db.withTenant({ tenantId, actorId: actor.grant.actorId, requestId: request.requestId }, fn);
  };

  /** A change: by a person who authenticated recently; answers the tenant and the audit context. */
  async function changing(request: RouteRequest<unknown, unknown, unknown>) {
    const { tenantId, actor } = tenantActorOf(request);
    await requireRecentAuthentication(deps, actor.principal);
    const change: SsoChangeContext = { tenantId, actor: tenantAuditActor(actor), requestId: request.requestId };
    const inTenant = <T>(fn: (tx: Tx) => Promise<T>) =>
      db.withTenant({ tenantId, actorId: actor.grant.actorId, requestId: request.requestId }, fn);
    return { change, inTenant };
  }

  const noConfiguration = () => new HttpProblem("not-found", "no such single sign-on configuration");
  const noDomain = () => new HttpProblem("not-found", "no such domain");
  const configurations = "/api/v1/tenants/:tenantId/sso/configurations";
  const domains = "/api/v1/tenants/:tenantId/sso/domains";

  return [
    defineRoute({
      method: "GET",
      url: configurations,
      operationId: "listSsoConfigurations",
      summary: "The organization's single sign-on providers (client secrets are never answered)",
      tags: TAGS,
      permission: { kind: "tenant", permission: "security.read" },
      params: tenantParams,
      response: { 200: z.object({ items: z.array(configurationSchema) }) },
      handler: async (request) => {
        const { tenantId } = tenantActorOf(request);
        const items = await reading(request)((tx) => listSsoConfigurations(tx, tenantId));
        return { items: items.map(toConfiguration) };
      },
    }),
    defineRoute({
      method: "POST",
      url: configurations,
      operationId: "createSsoConfiguration",
      summary: "Add an OpenID Connect provider (after recent authentication)",
      tags: TAGS,
      permission: { kind: "tenant", permission: "security.manage" },
      params: tenantParams,
      body: newConfiguration,
      response: { 201: configurationSchema, 400: problemSchema, 403: problemSchema },
      handler: async (request, reply) => {
        const { change, inTenant } = await changing(request);
        const created = await inTenant((tx) => createSsoConfiguration(tx, deps, change, request.body));
        reply.code(201);
        return toConfiguration(created);
      },
    }),
    defineRoute({
      method: "GET",
      url: `${configurations}/:configurationId`,
      operationId: "getSsoConfiguration",
      summary: "One single sign-on provider of the organization",
      tags: TAGS,
      permission: { kind: "tenant", permission: "security.read" },
      params: configurationParams,
      response: { 200: configurationSchema, 404: problemSchema },
      handler: async (request) => {
        const { tenantId } = tenantActorOf(request);
        const found = await reading(request)((tx) =>
          findSsoConfiguration(tx, tenantId, request.params.configurationId),
        );
        if (!found) throw noConfiguration();
        return toConfiguration(found);
      },
    }),
    defineRoute({
      method: "PATCH",
      url: `${configurations}/:configurationId`,
      operationId: "updateSsoConfiguration",
      summary: "Change a single sign-on provider (a new client secret replaces the old; after recent authentication)",
      tags: TAGS,
      permission: { kind: "tenant", permission: "security.manage" },
      params: configurationParams,
      body: configurationChanges,
      response: { 200: configurationSchema, 400: problemSchema, 403: problemSchema, 404: problemSchema },
      handler: async (request) => {
        const { change, inTenant } = await changing(request);
        const { configurationId } = request.params;
        const updated = await inTenant((tx) =>
          updateSsoConfiguration(tx, deps, { ...change, configurationId }, request.body),
        );
        if (!updated) throw noConfiguration();
        return toConfiguration(updated);
      },
    }),
    defineRoute({
      method: "DELETE",
      url: `${configurations}/:configurationId`,
      operationId: "deleteSsoConfiguration",
      summary: "Remove a single sign-on provider and the identities linked through it (after recent authentication)",
      tags: TAGS,
      permission: { kind: "tenant", permission: "security.manage" },
      params: configurationParams,
      response: { 204: z.null(), 403: problemSchema, 404: problemSchema },
      handler: async (request, reply) => {
        const { change, inTenant } = await changing(request);
        const { configurationId } = request.params;
        if (!(await inTenant((tx) => deleteSsoConfiguration(tx, deps, { ...change, configurationId })))) {
          throw noConfiguration();
        }
        return reply.code(204).send();
      },
    }),
    defineRoute({
      method: "GET",
      url: domains,
      operationId: "listSsoDomains",
      summary: "The email domains the organization claimed, verified or not, with the DNS record each needs",
      tags: TAGS,
      permission: { kind: "tenant", permission: "security.read" },
      params: tenantParams,
      response: { 200: z.object({ items: z.array(domainSchema) }) },
      handler: async (request) => {
        const { tenantId } = tenantActorOf(request);
        const items = await reading(request)((tx) => listSsoDomains(tx, tenantId));
        return { items: items.map(toDomain) };
      },
    }),
    defineRoute({
      method: "POST",
      url: domains,
      operationId: "addSsoDomain",
      summary: "Claim an email domain; it counts once its DNS TXT record is verified (after recent authentication)",
      tags: TAGS,
      permission: { kind: "tenant", permission: "security.manage" },
      params: tenantParams,
      body: z.object({ domain: z.string().min(1).max(253) }).strict(),
      response: { 201: domainSchema, 400: problemSchema, 403: problemSchema, 409: problemSchema },
      handler: async (request, reply) => {
        const { change, inTenant } = await changing(request);
        const added = await inTenant((tx) => addSsoDomain(tx, deps, change, request.body.domain));
        reply.code(201);
        return toDomain(added);
      },
    }),
    defineRoute({
      method: "POST",
      url: `${domains}/:domainId/verify`,
      operationId: "verifySsoDomain",
      summary: "Look the domain's DNS TXT record up and mark it verified when it holds the token",
      tags: TAGS,
      permission: { kind: "tenant", permission: "security.manage" },
      params: domainParams,
      response: { 200: domainSchema, 403: problemSchema, 404: problemSchema, 409: problemSchema, 503: problemSchema },
      handler: async (request) => {
        const { change } = await changing(request);
        const verified = await verifySsoDomain(deps, { ...change, domainId: request.params.domainId });
        if (!verified) throw noDomain();
        return toDomain(verified);
      },
    }),
    defineRoute({
      method: "DELETE",
      url: `${domains}/:domainId`,
      operationId: "removeSsoDomain",
      summary: "Give up a domain claim: its addresses no longer join just in time (after recent authentication)",
      tags: TAGS,
      permission: { kind: "tenant", permission: "security.manage" },
      params: domainParams,
      response: { 204: z.null(), 403: problemSchema, 404: problemSchema },
      handler: async (request, reply) => {
        const { change, inTenant } = await changing(request);
        const { domainId } = request.params;
        if (!(await inTenant((tx) => removeSsoDomain(tx, deps, { ...change, domainId })))) throw noDomain();
        return reply.code(204).send();
      },
    }),
  ];
}
