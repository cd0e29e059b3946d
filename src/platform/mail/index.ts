export { mailInventory } from "./inventory.ts";
export { formatOutbox, mailOutboxCommand } from "./outbox.ts";
export {
  MAIL_CHANNELS,
  MAIL_PURPOSES,
  MAIL_STATUSES,
  type MailChannel,
  type MailPurpose,
  type MailStatus,
} from "./schema.ts";
export {
  createMailer,
  DELIVERY_LEASE_MS,
  type DeliveryOutcome,
  type EnqueueDelivery,
  type Mailer,
  type MailerOptions,
  MailInputError,
  type MailRecipient,
  type MessageRef,
  type OutboxEntry,
  type OutgoingMessage,
  type PreSendHook,
  type PreSendMessage,
  type PreSendVerdict,
  type SendResult,
} from "./service.ts";
export {
  createTemplateRegistry,
  defineTemplate,
  html,
  type MailTemplate,
  MailTemplateError,
  PLATFORM_TEMPLATES,
  platformTemplates,
  type RenderedMail,
  type SafeHtml,
  type TemplateRegistry,
} from "./templates.ts";
export {
  createSmtpTransport,
  MailDeliveryError,
  type MailTransport,
  type OutgoingMail,
  type SmtpTransportOptions,
} from "./transport.ts";
