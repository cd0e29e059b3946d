import type { ColumnType } from "kysely";

declare module "../db/schema.ts" {
  interface Tables {
    mail_messages: MailMessagesTable;
    platform_mail_messages: PlatformMailMessagesTable;
  }
}

/** Why a message is sent; each purpose is a gate the pre-send hook can apply its own rules to. */
export const MAIL_PURPOSES = ["transactional", "security", "marketing"] as const;
export type MailPurpose = (typeof MAIL_PURPOSES)[number];

export const MAIL_CHANNELS = ["email"] as const;
export type MailChannel = (typeof MAIL_CHANNELS)[number];

/**
 * queued: waiting for delivery over SMTP; outbox: kept for reading, no SMTP configured (embedded mode);
 * suppressed: refused by the pre-send hook or its recipient erased, never sent; sending: an attempt is
 * under way (or was interrupted); sent: accepted by the SMTP server; failed: the last attempt failed.
 */
export const MAIL_STATUSES = ["queued", "suppressed", "outbox", "sending", "sent", "failed"] as const;
export type MailStatus = (typeof MAIL_STATUSES)[number];

/** The columns both message tables share. */
interface MessageColumns {
  id: string;
  purpose: MailPurpose;
  channel: MailChannel;
  /** Envelope of the address under the recipient's key; null once suppressed. */
  recipient: string | null;
  template: string;
  /** Envelope of the template data (JSON) under the recipient's key; null once suppressed. */
  data: string | null;
  status: MailStatus;
  /** The pre-send hook's reason (suppressed) or the error's code (failed); never an address or a body. */
  status_reason: string | null;
  attempts: number;
  created_at: ColumnType<Date, Date | string, never>;
  last_attempt_at: ColumnType<Date | null, Date | string | null, Date | string | null>;
  sent_at: ColumnType<Date | null, Date | string | null, Date | string | null>;
  /** The SMTP server's reply accepting the message (its queue id), addresses masked. */
  provider_response: string | null;
}

export interface MailMessagesTable extends MessageColumns {
  tenant_id: string;
  /** The CRM subject the message is addressed to. */
  subject_id: string;
}

export interface PlatformMailMessagesTable extends MessageColumns {
  /** The person (a user of Charter, or someone invited to become one) the message is addressed to. */
  person_id: string;
}
