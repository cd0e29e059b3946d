import type { MailTemplate } from "../../platform/mail/index.ts";

// Placeholder: replaced by the account mail templates.
export const identityTemplates: readonly MailTemplate[] = [];
