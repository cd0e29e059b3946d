import { z } from "zod";
import { defineTemplate, html, type MailTemplate } from "../../platform/mail/index.ts";
import { MEMBERSHIP_ROLES } from "./roles.ts";

/**
 * An invitation to join a tenant: its name, the role offered and the link. Nothing about who invited
 * (the address of the recipient is the envelope's; the link names no one).
 */
export const invitationMail = defineTemplate({
  name: "member-invitation",
  data: z.object({
    organization: z.string().min(1).max(200),
    role: z.enum(MEMBERSHIP_ROLES),
    link: z.url({ protocol: /^https?$/ }),
    days: z.number().int().min(1).max(30),
  }),
  render: ({ organization, role, link, days }) => ({
    subject: `You are invited to join ${organization} on Charter`,
    text: [
      `You are invited to join ${organization} on Charter as ${role}.`,
      `To accept, open this link, sign in (or create an account) with this address, and press the button on the page:\n\n${link}`,
      `The invitation is valid for ${days} days and works once. If you did not expect it, ignore this message.`,
    ].join("\n\n"),
    html: [
      html`<p>You are invited to join <strong>${organization}</strong> on Charter as ${role}.</p>`.markup,
      html`<p>To accept, open this link, sign in (or create an account) with this address, and press the button on the page:</p>`
        .markup,
      html`<p><a href="${link}">${link}</a></p>`.markup,
      html`<p>The invitation is valid for ${days} days and works once. If you did not expect it, ignore this message.</p>`
        .markup,
    ].join(""),
  }),
});

/** The mail templates of memberships, registered with the identity module's (index.ts). */
export const memberTemplates: readonly MailTemplate[] = [invitationMail];
