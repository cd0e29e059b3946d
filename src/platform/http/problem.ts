import { z } from "zod";

/**
 * RFC 9457 problem types. The `type` URI is stable (`/problems/<slug>`, served by Charter itself) so
 * clients can branch on it; titles are fixed per type, details vary per occurrence.
 */
export const PROBLEM_TYPES = {
  "bad-request": { status: 400, title: "The request is malformed" },
  validation: { status: 400, title: "The request does not match the schema" },
  unauthenticated: { status: 401, title: "Authentication is required" },
  forbidden: { status: 403, title: "You are not allowed to do this" },
  "cross-site-request": { status: 403, title: "A cross-site request was refused" },
  "reauthentication-required": { status: 403, title: "Confirm it is you: sign in again to do this" },
  "tenant-suspended": { status: 403, title: "This organization is suspended" },
  "tenant-read-only": { status: 403, title: "This organization is read-only" },
  "mfa-required": { status: 403, title: "This organization requires multi-factor authentication" },
  "sso-required": { status: 403, title: "This organization requires single sign-on through its provider" },
  "sign-in-method-not-allowed": { status: 403, title: "This organization does not accept how you signed in" },
  "tenant-session-expired": { status: 403, title: "Sign in again to open this organization" },
  "second-factor-required": { status: 401, title: "Prove your second factor to finish signing in" },
  "last-second-factor": {
    status: 409,
    title: "This is your last second factor, and an organization you belong to requires one",
  },
  "weak-password": { status: 400, title: "The password is too weak" },
  "not-found": { status: 404, title: "Not found" },
  "method-not-allowed": { status: 405, title: "Method not allowed" },
  conflict: { status: 409, title: "The request conflicts with the current state" },
  "precondition-failed": { status: 412, title: "A precondition failed" },
  "payload-too-large": { status: 413, title: "The request body is too large" },
  "unsupported-media-type": { status: 415, title: "Unsupported content type" },
  "rate-limited": { status: 429, title: "Too many requests" },
  internal: { status: 500, title: "Internal error" },
  unavailable: { status: 503, title: "Service unavailable" },
} as const;

export type ProblemSlug = keyof typeof PROBLEM_TYPES;

export const problemSchema = z
  .object({
    type: z.string(),
    title: z.string(),
    status: z.number().int(),
    detail: z.string().optional(),
    instance: z.string().optional(),
    requestId: z.string().optional(),
    errors: z.array(z.object({ path: z.string(), message: z.string() })).optional(),
  })
  .meta({ id: "Problem" });

export type Problem = z.infer<typeof problemSchema>;

/** Thrown anywhere in a request to answer with a problem; anything else thrown becomes a bare 500. */
export class HttpProblem extends Error {
  override name = "HttpProblem";
  readonly slug: ProblemSlug;
  readonly detail: string | undefined;
  readonly headers: Record<string, string>;
  readonly errors: Problem["errors"];
  constructor(
    slug: ProblemSlug,
    detail?: string,
    extra: { headers?: Record<string, string>; errors?: Problem["errors"] } = {},
  ) {
    super(detail ?? PROBLEM_TYPES[slug].title);
    this.slug = slug;
    this.detail = detail;
    this.headers = extra.headers ?? {};
    this.errors = extra.errors;
  }
  get status(): number {
    return PROBLEM_TYPES[this.slug].status;
  }
}

export function problemBody(slug: ProblemSlug, fields: Omit<Problem, "type" | "title" | "status"> = {}): Problem {
  const { status, title } = PROBLEM_TYPES[slug];
  return { type: `/problems/${slug}`, title, status, ...fields };
}
