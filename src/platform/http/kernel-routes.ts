import type { FastifyInstance } from "fastify";
import { z } from "zod";
import type { Database } from "../db/index.ts";
import { renderApiReference } from "./api-reference.ts";
import { HttpProblem, PROBLEM_TYPES, type ProblemSlug, problemSchema } from "./problem.ts";
import { type AnyRoute, defineRoute, isApiPath } from "./routes.ts";
import { renderWebApp } from "./web-app.ts";

const PUBLIC = { kind: "public" } as const;

/** The kernel's own routes: health, readiness, the API description and reference, problem types, the web app. */
export function kernelRoutes(deps: { db: Database; app: () => FastifyInstance }): AnyRoute[] {
  return [
    defineRoute({
      method: "GET",
      url: "/health",
      operationId: "getHealth",
      summary: "Liveness: the process answers",
      tags: ["operations"],
      permission: PUBLIC,
      response: { 200: z.object({ status: z.literal("ok") }) },
      handler: async () => ({ status: "ok" as const }),
    }),
    defineRoute({
      method: "GET",
      url: "/ready",
      operationId: "getReadiness",
      summary: "Readiness: the database answers and its migrations are current",
      tags: ["operations"],
      permission: PUBLIC,
      response: { 200: z.object({ status: z.literal("ready") }), 503: problemSchema },
      handler: async () => {
        let pending: number;
        try {
          pending = (await deps.db.pendingMigrations()).length;
        } catch {
          throw new HttpProblem("unavailable", "the database does not answer");
        }
        if (pending > 0) throw new HttpProblem("unavailable", `${pending} migrations are pending`);
        return { status: "ready" as const };
      },
    }),
    defineRoute({
      method: "GET",
      url: "/openapi.json",
      operationId: "getOpenApi",
      summary: "The OpenAPI 3.1 description of this API",
      tags: ["operations"],
      permission: PUBLIC,
      response: { 200: z.record(z.string(), z.unknown()) },
      handler: async () => deps.app().swagger() as unknown as Record<string, unknown>,
    }),
    defineRoute({
      method: "GET",
      url: "/docs",
      operationId: "getApiReference",
      summary: "The API reference, as a page",
      permission: PUBLIC,
      hidden: true,
      response: {},
      handler: async (_request, reply) =>
        reply.type("text/html; charset=utf-8").send(renderApiReference(deps.app().swagger(), reply.cspNonce.style)),
    }),
    defineRoute({
      method: "GET",
      url: "/problems/:slug",
      operationId: "getProblemType",
      summary: "What a problem type means",
      tags: ["operations"],
      permission: PUBLIC,
      params: z.object({ slug: z.string().max(64) }),
      response: { 200: z.object({ type: z.string(), title: z.string(), status: z.number().int() }) },
      handler: async (request) => {
        const slug = request.params.slug as ProblemSlug;
        if (!Object.hasOwn(PROBLEM_TYPES, slug)) throw new HttpProblem("not-found", "no such problem type");
        return { type: `/problems/${slug}`, ...PROBLEM_TYPES[slug] };
      },
    }),
    defineRoute({
      method: "GET",
      url: "/*",
      operationId: "getWebApp",
      summary: "The web app (single-page fallback for every non-API path)",
      permission: PUBLIC,
      hidden: true,
      response: {},
      handler: async (request, reply) => {
        const path = request.raw.url.split("?")[0] ?? "/";
        if (isApiPath(path)) throw new HttpProblem("not-found", `no resource at ${path}`);
        return reply.type("text/html; charset=utf-8").send(renderWebApp(reply.cspNonce));
      },
    }),
  ];
}
