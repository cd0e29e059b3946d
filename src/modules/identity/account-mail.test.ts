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
      "password-changed",
      "password-reset",
      "password-reset-done",
      "signup-existing-account",
      "verify-email",
    ]);
  });

  it.each(identityTemplates.map((t) => t.name))("%s greets by name and carries the link, escaped in HTML", (name) => {
    const link = `https://charter.test/page#token=${TOKEN}`;
    const mail = registry.render(name, { displayName: `Ada <b>"L"</b>`, link });
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
});
