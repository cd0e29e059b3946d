import helmet from "@fastify/helmet";
import swagger from "@fastify/swagger";
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import {
  hasZodFastifySchemaValidationErrors,
  jsonSchemaTransform,
  jsonSchemaTransformObject,
  serializerCompiler,
  validatorCompiler,
  type ZodTypeProvider,
} from "fastify-type-provider-zod";
import FindMyWay from "find-my-way";
import type { Config } from "../../config.ts";
import type { Clock } from "../clock.ts";
import type { Database, Tx } from "../db/index.ts";
import { isUuid, uuidv7 } from "../ids.ts";
import { logOptions } from "../log.ts";
import type { RateLimiter } from "../ratelimit/limiter.ts";
import { isFeatureEnabled } from "../tenancy/features.ts";
import { findTenant, type Tenant } from "../tenancy/tenants.ts";
import { HttpProblem, type ProblemSlug, problemBody } from "./problem.ts";
import { type AnyRoute, CONTENT_TYPES, type ContentType, type Grant, isApiPath, type Principal } from "./routes.ts";

/**
 * The answer of an access check in a tenant. A principal who is not a member (or whose key belongs to
 * another tenant) is told the tenant does not exist (404), exactly as for an unknown id; a member without
 * the permission is refused (403).
 */
export type TenantAccess =
  | { outcome: "granted"; grant: Grant }
  | { outcome: "not-member" }
  | { outcome: "forbidden"; detail?: string; slug?: ProblemSlug };

/** How the identity module tells the kernel who is calling and what they may do. */
export interface AccessControl {
  /**
   * Who is calling, or null. `tenantId` is the well-formed tenant id of the path on tenant routes (an API
   * key works in its own tenant only). May set headers on `reply` (a rotated session cookie).
   */
  principal(request: FastifyRequest, reply: FastifyReply, tenantId: string | undefined): Promise<Principal | null>;
  /**
   * Whether the principal holds `permission` in the tenant, checked on every request, inside the request's
   * tenant check: `tx` is that tenant's transaction and `tenant` its registry row, both from the kernel.
   */
  authorize(
    principal: Principal,
    tenant: Tenant,
    permission: string,
    context: { requestId: string; tx: Tx },
  ): Promise<TenantAccess>;
}

/** Until an identity module is installed nobody is signed in, so every protected route is refused. */
export const noAccessControl: AccessControl = {
  principal: async () => null,
  authorize: async () => ({ outcome: "not-member" }),
};

export interface AppDeps {
  config: Pick<Config, "trustedProxies" | "logLevel" | "rateLimit" | "tls" | "publicUrl">;
  db: Database;
  clock: Clock;
  rateLimiter: RateLimiter;
  routes: AnyRoute[];
  accessControl?: AccessControl;
  /** TLS material read from the configured files; HTTPS and HSTS when present. */
  https?: { key: Buffer; cert: Buffer; minVersion: "TLSv1.2" | "TLSv1.3" };
  /** Log output; `false` silences logs (tests); a stream receives them instead of standard output. */
  log?: boolean | { write(line: string): void };
}

const DEFAULT_BODY_LIMIT = 1024 * 1024;

interface CharterRequestState {
  principal: Principal | null;
  grant: Grant | undefined;
  tenantId: string | undefined;
  rawBody: Buffer | undefined;
}

declare module "fastify" {
  interface FastifyRequest {
    charter: CharterRequestState;
  }
  interface FastifyContextConfig {
    charterRoute?: AnyRoute;
  }
}

function sendProblem(
  reply: FastifyReply,
  request: FastifyRequest,
  slug: ProblemSlug,
  detail?: string,
  extra: Pick<HttpProblem, "headers" | "errors"> = { headers: {}, errors: undefined },
) {
  const body = problemBody(slug, {
    ...(detail ? { detail } : {}),
    instance: request.url.split("?")[0],
    requestId: request.id,
    ...(extra.errors ? { errors: extra.errors } : {}),
  });
  return reply.code(body.status).headers(extra.headers).type("application/problem+json").send(body);
}

/** Fastify's own client errors, by code, as problem types. */
const FASTIFY_ERRORS: Record<string, ProblemSlug> = {
  FST_ERR_CTP_BODY_TOO_LARGE: "payload-too-large",
  FST_ERR_CTP_INVALID_MEDIA_TYPE: "unsupported-media-type",
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: "bad-request",
  FST_ERR_CTP_EMPTY_JSON_BODY: "bad-request",
  FST_ERR_CTP_INVALID_JSON_BODY: "bad-request",
  FST_ERR_VALIDATION: "validation",
  FST_ERR_BAD_URL: "bad-request",
  FST_ERR_ASYNC_CONSTRAINT: "bad-request",
};

function mediaType(request: FastifyRequest): string | undefined {
  return request.headers["content-type"]?.split(";")[0]?.trim().toLowerCase();
}

const SAFE_METHODS: ReadonlySet<string> = new Set(["GET", "HEAD", "OPTIONS"]);

/** GET, HEAD and OPTIONS change nothing, so nobody gains from forging them. */
export function isSafeMethod(method: string): boolean {
  return SAFE_METHODS.has(method.toUpperCase());
}

/**
 * CSRF (promise A5), first line: a browser labels each request with Sec-Fetch-Site, which no page can forge,
 * and an unsafe request from any other site, or typed by nobody ("none" cannot be a POST), is refused before
 * anything runs, on public routes too (login CSRF on sign-in and sign-up). Clients that do not send the header
 * are judged by the identity module, which knows the session cookie (identity/csrf.ts). Public-tenant routes
 * are exempt: they take no cookie, only a credential the request itself carries (a signature, a token), and
 * some are meant to be posted to from other sites (mail providers' one-click unsubscribe, forms).
 */
function refuseCrossSite(request: FastifyRequest, route: AnyRoute | undefined): void {
  if (isSafeMethod(request.method) || route?.permission.kind === "public-tenant") return;
  const site = request.headers["sec-fetch-site"];
  if (site !== undefined && site !== "same-origin") {
    throw new HttpProblem("cross-site-request", "this request did not come from a page of this site");
  }
}

/** Builds the HTTP surface: every route comes from the registry with a declared permission. */
export async function buildApp(deps: AppDeps): Promise<FastifyInstance> {
  const access = deps.accessControl ?? noAccessControl;
  const app = Fastify({
    ...(deps.https ? { https: { key: deps.https.key, cert: deps.https.cert, minVersion: deps.https.minVersion } } : {}),
    trustProxy: deps.config.trustedProxies.length > 0 ? deps.config.trustedProxies : false,
    bodyLimit: DEFAULT_BODY_LIMIT,
    genReqId: () => uuidv7(),
    requestIdHeader: false,
    forceCloseConnections: "idle",
    return503OnClosing: true,
    // Logs carry no personal data (L5): the options live in platform/log.ts.
    logger:
      deps.log === false
        ? false
        : { ...logOptions(deps.config.logLevel), ...(typeof deps.log === "object" ? { stream: deps.log } : {}) },
  }).withTypeProvider<ZodTypeProvider>();

  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  app.decorateRequest("charter", null as unknown as CharterRequestState);

  // Body parsers: JSON and form-encoded only, each keeping the raw bytes for routes that verify signatures.
  app.removeAllContentTypeParsers();
  const parseJson = app.getDefaultJsonParser("error", "error");
  app.addContentTypeParser("application/json", { parseAs: "buffer" }, (request, body, done) => {
    if (request.routeOptions.config.charterRoute?.rawBody) request.charter.rawBody = body as Buffer;
    parseJson(request, (body as Buffer).toString("utf8"), done);
  });
  app.addContentTypeParser("application/x-www-form-urlencoded", { parseAs: "buffer" }, (request, body, done) => {
    if (request.routeOptions.config.charterRoute?.rawBody) request.charter.rawBody = body as Buffer;
    done(null, Object.fromEntries(new URLSearchParams((body as Buffer).toString("utf8"))));
  });

  await app.register(helmet, {
    enableCSPNonces: true,
    contentSecurityPolicy: {
      useDefaults: false,
      directives: {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
        ...(deps.https ? { "upgrade-insecure-requests": [] } : {}),
      },
    },
    hsts: deps.https ? { maxAge: 63_072_000, includeSubDomains: true } : false,
    crossOriginEmbedderPolicy: false,
    frameguard: { action: "deny" },
  });

  await app.register(swagger, {
    openapi: {
      openapi: "3.1.0",
      info: {
        title: "Charter API",
        version: "0.1.0",
        description: "Every operation declares the permission it requires (x-charter-permission).",
      },
      servers: [{ url: deps.config.publicUrl.origin }],
    },
    transform: jsonSchemaTransform,
    transformObject: jsonSchemaTransformObject,
  });

  // Shutdown drains in-flight requests; a response sent after close() began also ends its keep-alive
  // connection, which would otherwise hold close() (and the database behind it) open until it times out.
  let closing = false;
  app.addHook("preClose", async () => {
    closing = true;
  });
  app.addHook("onSend", async (_request, reply) => {
    if (closing) reply.header("connection", "close");
  });

  app.addHook("onRequest", async (request, reply) => {
    request.charter = { principal: null, grant: undefined, tenantId: undefined, rawBody: undefined };
    reply.header("x-request-id", request.id);
    const path = request.url.split("?")[0] ?? "/";
    const route = request.routeOptions.config.charterRoute;
    refuseCrossSite(request, route);
    // The web app's catch-all answers every GET, but under /api/ it only says 404: no route was found there.
    const routeFound = route !== undefined && !(route.url.includes("*") && isApiPath(path));
    const facts = { address: request.ip, method: request.method, path, routeFound };
    const verdict = deps.rateLimiter.check(facts);
    if (verdict === "deny") throw new HttpProblem("forbidden", "requests from this source are blocked");
    if (verdict === "allow") return;
    const { perAddress, windowSeconds } = deps.config.rateLimit;
    const decision = await deps.rateLimiter.consume(
      { kind: "address", address: request.ip },
      { name: "requests", limit: perAddress, windowSeconds },
    );
    reply.header("ratelimit-limit", perAddress).header("ratelimit-remaining", decision.remaining);
    if (!decision.allowed) {
      throw new HttpProblem("rate-limited", "too many requests from this source; slow down", {
        headers: { "retry-after": String(decision.retryAfter) },
      });
    }
  });

  app.setErrorHandler((error, request, reply) => {
    if (error instanceof HttpProblem) {
      return sendProblem(reply, request, error.slug, error.detail, error);
    }
    if (hasZodFastifySchemaValidationErrors(error)) {
      const errors = error.validation.map((issue) => ({
        path: `${error.validationContext ?? "request"}${issue.instancePath}`,
        message: issue.message ?? "invalid",
      }));
      return sendProblem(reply, request, "validation", "the request does not match the schema", {
        headers: {},
        errors,
      });
    }
    const code = (error as { code?: string }).code;
    const slug = code ? FASTIFY_ERRORS[code] : undefined;
    if (slug) return sendProblem(reply, request, slug, (error as Error).message);
    request.log.error({ err: error }, "request failed");
    // A 500 carries the request id for support and nothing of the internals.
    return sendProblem(reply, request, "internal");
  });

  const router = FindMyWay();
  app.setNotFoundHandler((request, reply) => {
    const path = request.url.split("?")[0] ?? "/";
    const allowed = ["GET", "POST", "PUT", "PATCH", "DELETE"].filter((m) => router.find(m as "GET", path));
    // Outside the API the web app answers every GET; and wherever GET is served, Fastify serves HEAD too.
    if (!isApiPath(path) && !allowed.includes("GET")) allowed.unshift("GET");
    if (allowed.includes("GET")) allowed.splice(1, 0, "HEAD");
    if (allowed.length > 0 && !allowed.includes(request.method)) {
      return sendProblem(reply, request, "method-not-allowed", `${request.method} is not allowed here`, {
        headers: { allow: allowed.join(", ") },
        errors: undefined,
      });
    }
    return sendProblem(reply, request, "not-found", `no resource at ${path}`);
  });

  // Fail closed: a route that reaches Fastify without passing through the registry stops start-up.
  app.addHook("onRoute", (options) => {
    if (!options.config?.charterRoute && options.method !== "HEAD") {
      throw new Error(`route ${String(options.method)} ${options.url} was added without a declared permission`);
    }
  });

  const operationIds = new Set<string>();
  for (const route of deps.routes) {
    registerRoute(app, router, route, operationIds, deps, access);
  }
  return app;
}

const PERMISSION_KINDS: readonly string[] = ["public", "public-tenant", "authenticated", "tenant", "operator"];

function checkRouteDeclaration(route: AnyRoute, operationIds: Set<string>): void {
  const where = `${route.method} ${route.url}`;
  const permission = route.permission as Partial<AnyRoute["permission"]> | undefined;
  if (!permission) throw new Error(`route ${where} declares no permission`);
  // Routes can reach here from plain JavaScript or through a cast: check what the types alone promise.
  if (!PERMISSION_KINDS.includes(permission.kind as string)) {
    throw new Error(`route ${where} declares an unknown permission kind ${String(permission.kind)}`);
  }
  if (permission.kind === "tenant" && (typeof permission.permission !== "string" || permission.permission === "")) {
    throw new Error(`route ${where} declares a tenant permission without naming it`);
  }
  if (permission.kind === "public-tenant" && typeof permission.credential?.verify !== "function") {
    throw new Error(`route ${where} is public-tenant but declares no credential check`);
  }
  if (typeof route.operationId !== "string" || route.operationId === "") {
    throw new Error(`route ${where} declares no operationId`);
  }
  if (operationIds.has(route.operationId)) throw new Error(`operationId ${route.operationId} is used twice`);
  operationIds.add(route.operationId);
  const tenantScoped = route.permission.kind === "tenant" || route.permission.kind === "public-tenant";
  if (tenantScoped && !route.url.includes(":tenantId")) {
    throw new Error(`route ${where} needs a tenant but its path has no :tenantId`);
  }
  if (route.feature && !tenantScoped) throw new Error(`route ${where} names a feature but no tenant`);
  if (!route.hidden && !route.url.startsWith("/api/") && !route.url.startsWith("/")) {
    throw new Error(`route ${where} has a malformed path`);
  }
}

function permissionLabel(route: AnyRoute): string {
  const p = route.permission;
  if (p.kind === "tenant") return `tenant:${p.permission}${p.record ? ` (record: ${p.record.name})` : ""}`;
  if (p.kind === "public-tenant") return `public-tenant (credential: ${p.credential.name})`;
  if (p.kind === "operator") return "operator";
  return p.kind;
}

function registerRoute(
  app: FastifyInstance,
  router: ReturnType<typeof FindMyWay>,
  route: AnyRoute,
  operationIds: Set<string>,
  deps: AppDeps,
  access: AccessControl,
): void {
  checkRouteDeclaration(route, operationIds);
  if (!route.url.includes("*")) router.on(route.method, route.url, () => {});
  const contentTypes: readonly ContentType[] = route.contentTypes ?? ["application/json"];

  const notFound = (request: FastifyRequest) =>
    new HttpProblem("not-found", `no resource at ${request.url.split("?")[0]}`);

  /**
   * The tenant of the path, in one transaction of that tenant: its registry row (a platform table) and the
   * route's feature switch, then `then` with both (the access check, on tenant routes). Unknown tenants and
   * switched-off features are not found.
   */
  async function inPathTenant<T>(
    request: FastifyRequest,
    then: (tx: Tx, tenant: Tenant) => Promise<T>,
  ): Promise<{ tenantId: string; result: T }> {
    const tenantId = pathTenantId(request) ?? "";
    if (!isUuid(tenantId)) throw new HttpProblem("not-found", "no such tenant");
    const feature = route.feature;
    const result = await deps.db.withTenant({ tenantId }, async (tx) => {
      // Sent together: one round trip on PostgreSQL.
      const [tenant, on] = await Promise.all([
        findTenant(tx, tenantId),
        feature === undefined || isFeatureEnabled(tx, tenantId, feature),
      ]);
      if (!tenant) throw new HttpProblem("not-found", "no such tenant");
      if (!on) throw notFound(request);
      return then(tx, tenant);
    });
    return { tenantId, result };
  }

  const pathTenantId = (request: FastifyRequest) => (request.params as { tenantId?: string }).tenantId;

  // Runs before the body is read: callers learn nothing about the body's schema before they are let in.
  async function guard(request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const permission = route.permission;
    if (permission.kind === "public") return;
    if (permission.kind === "public-tenant") {
      const { tenantId } = await inPathTenant(request, async () => undefined);
      if (!(await permission.credential.verify(request, tenantId))) {
        throw new HttpProblem("unauthenticated", `a valid ${permission.credential.name} is required`);
      }
      request.charter.tenantId = tenantId;
      return;
    }
    const pathTenant = permission.kind === "tenant" ? pathTenantId(request) : undefined;
    const principal = await access.principal(request, reply, pathTenant && isUuid(pathTenant) ? pathTenant : undefined);
    if (!principal) throw new HttpProblem("unauthenticated");
    request.charter.principal = principal;
    if (permission.kind === "authenticated") return;
    if (permission.kind === "operator") {
      if (principal.kind !== "operator") throw new HttpProblem("forbidden", "this operation is for operators only");
      return;
    }
    const { tenantId, result: decision } = await inPathTenant(request, (tx, tenant) =>
      access.authorize(principal, tenant, permission.permission, { requestId: request.id, tx }),
    );
    if (decision.outcome === "not-member") throw new HttpProblem("not-found", "no such tenant");
    if (decision.outcome === "forbidden") throw new HttpProblem(decision.slug ?? "forbidden", decision.detail);
    // A record the caller may not see is reported as absent, so its existence does not leak.
    if (permission.record && !(await permission.record.allows(principal, decision.grant, tenantId, request.params))) {
      throw notFound(request);
    }
    request.charter.grant = decision.grant;
    request.charter.tenantId = tenantId;
  }

  app.route({
    method: route.method,
    url: route.url,
    bodyLimit: route.bodyLimit ?? DEFAULT_BODY_LIMIT,
    config: { charterRoute: route },
    schema: {
      operationId: route.operationId,
      summary: route.summary,
      ...(route.tags ? { tags: route.tags } : {}),
      ...(route.hidden ? { hide: true } : {}),
      "x-charter-permission": permissionLabel(route),
      ...(route.feature ? { "x-charter-feature": route.feature } : {}),
      ...(route.params ? { params: route.params } : {}),
      ...(route.query ? { querystring: route.query } : {}),
      ...(route.body ? { body: route.body, consumes: [...contentTypes] } : {}),
      response: route.response,
    },
    onRequest: guard,
    preValidation: async (request) => {
      const type = mediaType(request);
      if (type && request.body !== undefined && !contentTypes.includes(type as ContentType)) {
        throw new HttpProblem("unsupported-media-type", `this operation accepts ${contentTypes.join(", ")}`, {
          headers: { accept: contentTypes.join(", ") },
        });
      }
    },
    handler: (request, reply) => {
      const routeRequest: Parameters<AnyRoute["handler"]>[0] = {
        params: request.params,
        query: request.query,
        body: request.body,
        rawBody: request.charter.rawBody,
        requestId: request.id,
        principal: request.charter.principal,
        grant: request.charter.grant,
        tenantId: request.charter.tenantId,
        raw: request,
      };
      return route.handler(routeRequest, reply);
    },
  });
}

export { CONTENT_TYPES };
