import { z } from "zod";
import { escapeHtml } from "../http/html.ts";

/** What a template renders: a one-line subject, a plain-text body and, optionally, an HTML body. */
export interface RenderedMail {
  subject: string;
  text: string;
  html?: string;
}

/** A named message: the shape of its data (validated when a message is recorded and again when rendered). */
export interface MailTemplate<S extends z.ZodType = z.ZodType> {
  name: string;
  data: S;
  render(data: z.output<S>): RenderedMail;
}

/** Thrown for an unknown template or data its schema refuses; nothing is recorded. */
export class MailTemplateError extends Error {
  override name = "MailTemplateError";
}

const TEMPLATE_NAME = /^[a-z][a-z0-9-]{0,62}$/;

/** Keeps the schema's type for `render` while the registry holds templates of any data. */
export function defineTemplate<S extends z.ZodType>(template: MailTemplate<S>): MailTemplate {
  if (!TEMPLATE_NAME.test(template.name)) {
    throw new TypeError(`mail template name "${template.name}" must be 1-63 characters of a-z, 0-9 and -`);
  }
  return template as unknown as MailTemplate;
}

export interface TemplateRegistry {
  has(name: string): boolean;
  /** Validates data for a template; returns it as its schema outputs it (what is stored). */
  parse(name: string, data: unknown): unknown;
  /** Validates the stored data again (the template may have changed since) and renders it. */
  render(name: string, data: unknown): RenderedMail;
}

/** A value for `html` that is already markup and must not be escaped again. */
export interface SafeHtml {
  readonly markup: string;
}

const isSafeHtml = (value: unknown): value is SafeHtml =>
  typeof value === "object" && value !== null && Object.hasOwn(value, "markup");

/** HTML from a template literal: every interpolated value is escaped, except nested `html` results. */
export function html(strings: TemplateStringsArray, ...values: unknown[]): SafeHtml {
  let markup = strings[0] ?? "";
  values.forEach((value, i) => {
    markup += (isSafeHtml(value) ? value.markup : escapeHtml(String(value))) + (strings[i + 1] ?? "");
  });
  return { markup };
}

/** Data paths and problems, never the values: the data may be personal. */
function describeIssues(error: z.ZodError): string {
  return error.issues
    .map((issue) => `${issue.path.length > 0 ? issue.path.join(".") : "(data)"}: ${issue.code}`)
    .join("; ");
}

export function createTemplateRegistry(templates: readonly MailTemplate[]): TemplateRegistry {
  const byName = new Map<string, MailTemplate>();
  for (const template of templates) {
    if (byName.has(template.name)) throw new TypeError(`mail template "${template.name}" is defined twice`);
    byName.set(template.name, template);
  }
  const find = (name: string): MailTemplate => {
    const template = byName.get(name);
    if (!template) throw new MailTemplateError(`unknown mail template "${name}"`);
    return template;
  };
  const parse = (name: string, data: unknown): unknown => {
    const result = find(name).data.safeParse(data);
    if (!result.success) {
      throw new MailTemplateError(`invalid data for mail template "${name}": ${describeIssues(result.error)}`);
    }
    return result.data;
  };
  return {
    has: (name) => byName.has(name),
    parse,
    render(name, data) {
      const rendered = find(name).render(parse(name, data));
      // A line break in a subject would be a header injection if anything downstream forgot to encode it.
      return { ...rendered, subject: rendered.subject.replace(/\s+/g, " ").trim() };
    },
  };
}

/** A one-time code to sign in; the code is valid for `minutes`. */
export const signInCode = defineTemplate({
  name: "sign-in-code",
  data: z.object({ code: z.string().regex(/^[0-9]{6,8}$/), minutes: z.number().int().min(1).max(60) }),
  render: ({ code, minutes }) => ({
    subject: "Your Charter sign-in code",
    text: `Your sign-in code is ${code}. It is valid for ${minutes} minutes.\n\nIf you did not try to sign in, ignore this message.\n`,
    html: html`<p>Your sign-in code is <strong>${code}</strong>. It is valid for ${minutes} minutes.</p><p>If you did not try to sign in, ignore this message.</p>`
      .markup,
  }),
});

/** The templates of the platform itself; the application adds its modules' templates to these. */
export const PLATFORM_TEMPLATES: readonly MailTemplate[] = [signInCode];

/** The registry of the platform's own templates (what the CLI and the server render until modules add theirs). */
export const platformTemplates: TemplateRegistry = createTemplateRegistry(PLATFORM_TEMPLATES);
