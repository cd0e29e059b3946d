import { z } from "zod";
import { defineTemplate, html, type MailTemplate } from "../../platform/mail/index.ts";
import { ALERT_KINDS, type AlertKind } from "./devices-alerts-schema.ts";
import { MEMBERSHIP_ROLES } from "./roles.ts";

/**
 * The mail of alerts (promise A6): one to the user whose account it is about, and, for warning-level alerts,
 * one to each owner and admin of the tenants that see it. A message says what happened and when, and links to
 * the page that lists the alerts; it never holds an address, a secret or anything of another tenant.
 */

/** The second factors an alert may name, as a reader knows them. */
export const ALERT_FACTORS = ["totp", "passkey", "backup-codes"] as const;
export type AlertFactor = (typeof ALERT_FACTORS)[number];
const FACTOR_NAMES: Readonly<Record<AlertFactor, string>> = {
  totp: "authenticator app",
  passkey: "passkey",
  "backup-codes": "backup codes",
};

const common = {
  displayName: z.string().min(1).max(100),
  kind: z.enum(ALERT_KINDS),
  at: z.iso.datetime(),
  link: z.url({ protocol: /^https?$/ }),
  organization: z.string().min(1).max(200).optional(),
  factor: z.enum(ALERT_FACTORS).optional(),
  role: z.enum(MEMBERSHIP_ROLES).optional(),
};

const userData = z.strictObject(common);
/** `member`: the display name of the member the alert is about (the recipient is `displayName`). */
const tenantData = z.strictObject({
  ...common,
  organization: common.organization.unwrap(),
  member: common.displayName,
});

type Facts = { at: string; organization?: string | undefined; factor?: AlertFactor | undefined; role?: string };

/** "2026-01-04 09:30 UTC": a time anyone can read, whatever their locale. */
const readableUtc = (iso: string) => `${iso.slice(0, 10)} ${iso.slice(11, 16)} UTC`;

/** What happened, told to the user it happened to. */
const TO_USER: Readonly<Record<AlertKind, string>> = {
  "failed-sign-in-burst":
    "Several attempts to sign in to your account failed within a few minutes, around {at}. If they were not yours, someone may be guessing your password: choose a strong one and add a second factor.",
  "sign-in-after-failures":
    "Your account was signed in to at {at}, after several failed attempts. If it was not you, change your password and sign out your other sessions at once.",
  "new-device":
    "Your account was signed in to at {at} from a browser or device that had not been used with it before. If it was not you, change your password and sign out your other sessions at once.",
  "factor-added": "A second factor ({factor}) was added to your account at {at}.",
  "factor-removed": "A second factor ({factor}) was removed from your account at {at}.",
  "backup-code-used": "One of your backup codes was used to sign in at {at}. It cannot be used again.",
  "api-key-created": "An API key was created with your account in {organization} at {at}.",
  "privileged-role-granted": "You were given the {role} role in {organization} at {at}.",
  "break-glass-used": "The break-glass access of {organization} was opened with your account at {at}.",
};

/** The same, told to the owners and admins of a tenant the member is in. */
const TO_ADMINS: Readonly<Record<AlertKind, string>> = {
  "failed-sign-in-burst":
    "Several attempts to sign in to the account of {member} failed within a few minutes, around {at}.",
  "sign-in-after-failures": "{member} signed in at {at}, after several failed attempts.",
  "new-device": "{member} signed in at {at} from a browser or device not used with their account before.",
  "factor-added": "{member} added a second factor ({factor}) at {at}.",
  "factor-removed": "{member} removed a second factor ({factor}) at {at}.",
  "backup-code-used": "{member} signed in with a backup code at {at}.",
  "api-key-created": "{member} created an API key in {organization} at {at}.",
  "privileged-role-granted": "{member} was given the {role} role in {organization} at {at}.",
  "break-glass-used": "{member} opened the break-glass access of {organization} at {at}.",
};

function sentence(text: string, facts: Facts & { member?: string }): string {
  return text.replace(/\{(at|organization|factor|role|member)\}/g, (_, name: string) => {
    if (name === "at") return readableUtc(facts.at);
    if (name === "factor") return facts.factor ? FACTOR_NAMES[facts.factor] : "a factor";
    const value = facts[name as "organization" | "role" | "member"];
    return value ?? "an organization";
  });
}

function render(subject: string, displayName: string, paragraphs: readonly string[], link: string) {
  const text = [`Hello ${displayName},`, ...paragraphs, link].join("\n\n");
  const markup = [
    html`<p>Hello ${displayName},</p>`.markup,
    ...paragraphs.map((p) => html`<p>${p}</p>`.markup),
    html`<p><a href="${link}">${link}</a></p>`.markup,
  ];
  return { subject, text: `${text}\n`, html: markup.join("") };
}

export const userAlertMail = defineTemplate({
  name: "security-alert",
  data: userData,
  render: (data) =>
    render(
      "Security alert for your Charter account",
      data.displayName,
      [sentence(TO_USER[data.kind], data), "Your account's alerts are listed here:"],
      data.link,
    ),
});

export const tenantAlertMail = defineTemplate({
  name: "tenant-security-alert",
  data: tenantData,
  render: (data) =>
    render(
      `Security alert in ${data.organization}`,
      data.displayName,
      [
        sentence(TO_ADMINS[data.kind], data),
        `You receive this as an owner or admin of ${data.organization}. Its alerts are listed here:`,
      ],
      data.link,
    ),
});

/** The alert templates, registered with the identity module's (index.ts). */
export const alertTemplates: readonly MailTemplate[] = [userAlertMail, tenantAlertMail];
