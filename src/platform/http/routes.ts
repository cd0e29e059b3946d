import type { FastifyReply, FastifyRequest } from "fastify";
import type { z } from "zod";

/** Who is calling: resolved by the identity module's access control; the kernel knows no one. */
export interface Principal {
  kind: "user" | "api-key" | "operator";
  /** Pseudonymous id used as the actor of platform transactions and audit events (a user or key id). */
  actorId: string;
  /** The signed-in user and their session (users and operators); absent for API keys. */
  userId?: string;
  sessionId?: string;
}

/**
 * What a principal holds in the tenant of a tenant route, once the access control granted the route's
 * permission: the actor of the tenant's transactions and events (a membership or API key id) and the role
 * it acts with.
 */
export interface Grant {
  actorId: string;
  /** The membership acting (for an API key: its owner's, or null for a service key). */
  membershipId: string | null;
  role: string;
}

/** A check of the credential a public-tenant route accepts in place of a membership. */
export interface CredentialCheck {
  /** What is verified, for the API reference: "webhook signature", "unsubscribe token", … */
  name: string;
  verify(request: FastifyRequest, tenantId: string): Promise<boolean>;
}

/** A record-level check after the tenant permission passed (guests see only what is shared with them). */
export interface RecordCheck {
  name: string;
  allows(principal: Principal, grant: Grant, tenantId: string, params: unknown): Promise<boolean>;
}

/**
 * What a route requires (promise T2). Every route declares one; there is no default.
 * - public: anyone.
 * - public-tenant: the tenant comes from the path and no membership is needed, but a declared credential is.
 * - authenticated: any signed-in principal.
 * - tenant: a named permission in the tenant named by `:tenantId`, optionally with a record-level check.
 * - operator: the platform's operators only (they hold no tenant permission at all).
 */
export type Permission =
  | { kind: "public" }
  | { kind: "public-tenant"; credential: CredentialCheck }
  | { kind: "authenticated" }
  | { kind: "tenant"; permission: string; record?: RecordCheck }
  | { kind: "operator" };

export const CONTENT_TYPES = ["application/json", "application/x-www-form-urlencoded"] as const;
export type ContentType = (typeof CONTENT_TYPES)[number];

type Schema = z.ZodType;
type Infer<S> = S extends z.ZodType ? z.output<S> : undefined;

export interface RouteRequest<P, Q, B> {
  params: Infer<P>;
  query: Infer<Q>;
  body: Infer<B>;
  /** The exact bytes received, for routes that verify signatures (`rawBody: true`). */
  rawBody: Buffer | undefined;
  requestId: string;
  principal: Principal | null;
  /** What the principal holds in the tenant, for tenant routes. */
  grant: Grant | undefined;
  /** The tenant named by the path, for tenant and public-tenant routes. */
  tenantId: string | undefined;
  /** The underlying request, for headers, cookies and the client address. */
  raw: FastifyRequest;
}

export interface RouteSpec<P = undefined, Q = undefined, B = undefined> {
  method: "GET" | "POST" | "PUT" | "PATCH" | "DELETE";
  /** Fastify path; API routes live under /api/v1/, tenant routes under /api/v1/tenants/:tenantId/. */
  url: string;
  /** Stable id of the operation, used by the generated client. */
  operationId: string;
  summary: string;
  tags?: string[];
  permission: Permission;
  /** A tenant feature switch: the route answers 404 while the tenant has it off. */
  feature?: string;
  params?: P;
  query?: Q;
  body?: B;
  /** Response schemas by status code. */
  response: Record<number, Schema>;
  /** Body limit in bytes (default 1 MiB). */
  bodyLimit?: number;
  /** Accepted request content types (default JSON only). */
  contentTypes?: ContentType[];
  rawBody?: boolean;
  /** Kept out of the OpenAPI document (HTML pages such as the web app fallback). */
  hidden?: boolean;
  handler(request: RouteRequest<P, Q, B>, reply: FastifyReply): Promise<unknown>;
}

/** Whether a path belongs to the API (where nothing falls back to the web app). */
export function isApiPath(path: string): boolean {
  return path === "/api" || path.startsWith("/api/");
}

// biome-ignore lint/suspicious/noExplicitAny: a heterogeneous list of routes erases their schema types
export type AnyRoute = RouteSpec<any, any, any>;

/** Declares a route with its schema types inferred into the handler. */
export function defineRoute<
  P extends Schema | undefined = undefined,
  Q extends Schema | undefined = undefined,
  B extends Schema | undefined = undefined,
>(spec: RouteSpec<P, Q, B>): RouteSpec<P, Q, B> {
  return spec;
}
