import { describe, expect, it } from "vitest";
import { z } from "zod";
import { createTemplateRegistry, defineTemplate, html, MailTemplateError, PLATFORM_TEMPLATES } from "./templates.ts";

const greeting = defineTemplate({
  name: "greeting",
  data: z.object({ name: z.string().min(1), count: z.number().int().default(1) }),
  render: ({ name, count }) => ({
    subject: `Hello\r\n${name}`,
    text: `Hello ${name}, you have ${count} new messages.`,
    html: html`<p>Hello ${name}, you have ${count} new messages.</p>${html`<hr>`}`.markup,
  }),
});

describe("mail templates", () => {
  const registry = createTemplateRegistry([greeting, ...PLATFORM_TEMPLATES]);

  it("escapes every interpolated value in HTML, but not nested html", () => {
    const rendered = registry.render("greeting", { name: `<script>alert("x")</script> & 'co'` });
    expect(rendered.html).toBe(
      "<p>Hello &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;co&#39;, you have 1 new messages.</p><hr>",
    );
    expect(rendered.text).toContain(`<script>alert("x")</script>`);
  });

  it("keeps the subject on one line", () => {
    expect(registry.render("greeting", { name: "Ada\nBcc: x@example.com" }).subject).toBe(
      "Hello Ada Bcc: x@example.com",
    );
  });

  it("parse returns the data as the schema outputs it", () => {
    expect(registry.parse("greeting", { name: "Ada" })).toEqual({ name: "Ada", count: 1 });
  });

  it("refuses an unknown template and invalid data, naming the field but never the value", () => {
    expect(() => registry.parse("nope", {})).toThrow(new MailTemplateError('unknown mail template "nope"'));
    const bad = () => registry.parse("greeting", { name: 42, count: "secret-value" });
    expect(bad).toThrow(MailTemplateError);
    expect(bad).toThrow(/invalid data for mail template "greeting": name: invalid_type; count: invalid_type/);
    expect(bad).not.toThrow(/secret-value/);
    expect(() => registry.render("sign-in-code", { code: "12ab", minutes: 10 })).toThrow(/code: invalid_format/);
  });

  it("refuses a duplicate or badly named template", () => {
    expect(() => createTemplateRegistry([greeting, greeting])).toThrow('mail template "greeting" is defined twice');
    expect(() =>
      defineTemplate({ name: "Bad Name", data: z.object({}), render: () => ({ subject: "", text: "" }) }),
    ).toThrow(/must be 1-63 characters/);
  });

  it("renders the sign-in code", () => {
    const rendered = registry.render("sign-in-code", { code: "123456", minutes: 10 });
    expect(rendered.subject).toBe("Your Charter sign-in code");
    expect(rendered.text).toContain("123456");
    expect(rendered.html).toContain("<strong>123456</strong>");
  });
});
