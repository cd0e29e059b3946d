import { describe, expect, it } from "vitest";
import { createTemplateRegistry, MailTemplateError } from "../../platform/mail/index.ts";
import { identityTemplates } from "./account-mail.ts";

const registry = createTemplateRegistry(identityTemplates);
const TOKEN = "A".repeat(43);

describe("account mail", () => {
  it("defines every account message", () => {
    expect(identityTemplates.map((t) => t.name).sort()).toEqual([
      "email-change-confirm",
      "email-change-existing-account",
      "email-changed-revert",
      "factor-reset-requested",
      "factors-reset",
      "password-changed",
      "password-reset",
      "password-reset-done",
      "signup-existing-account",
      "verify-email",
    ]);
  });

  it.each(identityTemplates.map((t) => t.name))("%s greets by name and carries the link, escaped in HTML", (name) => {
    const link = `https://charter.test/page#token=${TOKEN}`;
    const at = name === "factor-reset-requested" ? { at: "2026-04-04T08:00:00.000Z" } : {};
    const mail = registry.render(name, { displayName: `Ada <b>"L"</b>`, link, ...at });
    expect(mail.subject).not.toContain("Ada");
    expect(mail.text).toContain(`Hello Ada <b>"L"</b>,`);
    expect(mail.text).toContain(`\n${link}\n`);
    expect(mail.html).toContain("Hello Ada &lt;b&gt;&quot;L&quot;&lt;/b&gt;,");
    expect(mail.html).toContain(`<a href="${link}">${link}</a>`);
    expect(mail.html).not.toContain("<b>");
  });

  it("holds the display name and the link only, and only web links", () => {
    const ok = { displayName: "Ada", link: "https://charter.test/verify-email#token=x" };
    expect(() => registry.parse("verify-email", ok)).not.toThrow();
    for (const data of [
      { ...ok, email: "ada@example.test" },
      { ...ok, link: "javascript:alert(1)" },
      { ...ok, displayName: "" },
      { link: ok.link },
    ]) {
      expect(() => registry.parse("verify-email", data)).toThrow(MailTemplateError);
    }
  });

  it("tells the previous address how to revert, and to reset the password afterwards", () => {
    const { text } = registry.render("email-changed-revert", { displayName: "Ada", link: "https://charter.test/x" });
    expect(text).toMatch(/7 days/);
    expect(text).toMatch(/reset your password/);
  });

  it("tells when a factor reset takes effect, in UTC, and needs that time", () => {
    const data = { displayName: "Ada", link: "https://charter.test/account" };
    const { text, html } = registry.render("factor-reset-requested", { ...data, at: "2026-04-04T08:00:00.000Z" });
    expect(text).toContain("takes effect at 2026-04-04 08:00 UTC");
    expect(html).toContain("takes effect at 2026-04-04 08:00 UTC");
    expect(text).toMatch(/cancel it/);
    expect(() => registry.parse("factor-reset-requested", data)).toThrow(MailTemplateError);
    expect(() => registry.parse("factor-reset-requested", { ...data, at: "soon" })).toThrow(MailTemplateError);
  });
});
