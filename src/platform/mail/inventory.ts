import "./schema.ts";
import {
  type ColumnEntry,
  defineTable,
  type LegalBasis,
  type ModuleInventory,
  notPersonal,
  type Retention,
} from "../inventory/types.ts";

/** The message log serves delivery, bounces and complaints; three months covers the questions asked of it. */
const MAIL_LOG: Retention = { anchor: "row-created", duration: "P90D", action: "delete" };

const plain = (purpose: string) => notPersonal("communication", purpose, MAIL_LOG);

function personal(purpose: string, legalBasis: LegalBasis, extra: Partial<ColumnEntry> = {}): ColumnEntry {
  return {
    category: "communication",
    personal: true,
    purpose,
    legalBasis,
    keyScope: null,
    erasure: { action: "delete" },
    retention: MAIL_LOG,
    ...extra,
  };
}

/** Columns both tables share, for a given legal basis and the key scope of the recipient's own key. */
function messageColumns(legalBasis: LegalBasis, keyScope: "subject" | "person") {
  const shredded = { keyScope, erasure: { action: "crypto-shred" } } as const;
  return {
    id: plain("identifies the message; its Message-ID header is derived from it"),
    purpose: plain("why the message is sent (transactional, security, marketing): the pre-send hook gates on it"),
    channel: plain("how the message is delivered (email)"),
    recipient: personal("the address the message is delivered to", legalBasis, shredded),
    template: plain("which template renders the message"),
    data: personal("the values the template renders into the message (JSON)", legalBasis, shredded),
    status: plain("where the message is on its way: queued, outbox, sending, sent, failed or suppressed"),
    // A hook's reason says something about the recipient (no consent, processing restricted).
    status_reason: personal("why the message was suppressed, or the code of its last delivery error", legalBasis),
    attempts: plain("how many delivery attempts were made"),
    created_at: plain("when the message was recorded"),
    last_attempt_at: plain("when the last delivery attempt began; a stale attempt is resumed"),
    sent_at: plain("when the SMTP server accepted the message"),
    provider_response: plain("the SMTP server's reply accepting the message (its queue id), addresses masked"),
  };
}

// A tenant's mail to its CRM subjects; marketing rows need consent, which the pre-send hook checks
// before a message is recorded and again before it is delivered.
const mailMessages = defineTable("mail_messages", {
  owner: "tenant",
  row: "one outbound message from a tenant to a person in its CRM",
  subject: { kind: "column", column: "subject_id", of: "crm-subject" },
  columns: {
    tenant_id: plain("the tenant that sends the message"),
    subject_id: personal("the CRM subject the message is addressed to (a pseudonymous id)", "legitimate-interest"),
    ...messageColumns("legitimate-interest", "subject"),
  },
});

const platformMailMessages = defineTable("platform_mail_messages", {
  owner: "platform",
  row: "one outbound message from the platform to a person it serves (sign-in code, invitation)",
  subject: { kind: "column", column: "person_id", of: "user" },
  columns: {
    person_id: personal("the person the message is addressed to (a pseudonymous id)", "contract"),
    ...messageColumns("contract", "person"),
  },
});

/** Migration 0005. */
export const mailInventory: ModuleInventory = {
  module: "mail",
  tables: [mailMessages, platformMailMessages],
};
