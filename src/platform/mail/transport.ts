import { createTransport } from "nodemailer";
import type { SmtpConfig } from "../../config.ts";
import { scrub } from "../log.ts";
import type { RenderedMail } from "./templates.ts";

/** One rendered message on its way out; it exists only in memory, between decryption and the SMTP server. */
export interface OutgoingMail extends RenderedMail {
  /** The message's id: the Message-ID header is derived from it, so a resent message keeps its identity. */
  messageId: string;
  to: string;
}

export interface MailTransport {
  /** Hands the message to the server; resolves with the server's reply, addresses masked. */
  send(mail: OutgoingMail): Promise<{ response: string }>;
  close(): void;
}

/**
 * A delivery failure, reduced to what is safe to keep and log: the error's code and SMTP reply code, never
 * the server's text, which often quotes the recipient's address. No `cause`, for the same reason.
 */
export class MailDeliveryError extends Error {
  override name = "MailDeliveryError";
  /** The server refused this message for good (a 5xx reply other than 503): retrying gets the same answer. */
  readonly permanent: boolean;
  /** For the message row: e.g. "EENVELOPE 550" or "ECONNECTION". */
  readonly reason: string;

  constructor(messageId: string, reason: string, permanent: boolean) {
    super(`delivery of mail message ${messageId} failed: ${reason}${permanent ? " (permanent)" : ""}`);
    this.reason = reason;
    this.permanent = permanent;
  }
}

/** The message-id domain: the From address's, so the header names the sender's own domain. */
function fromDomain(from: string): string {
  const address = /<([^<>]+)>\s*$/.exec(from)?.[1] ?? from;
  return address.slice(address.lastIndexOf("@") + 1);
}

export interface SmtpTransportOptions {
  smtp: SmtpConfig;
  from: string;
  /** Certificates (PEM) to trust instead of the system's CAs: a private relay's CA, or a test server's. */
  ca?: string | Buffer;
}

/**
 * Delivery over SMTP. TLS 1.2 at least whenever TLS is used; smtps:// uses it from the first byte, and
 * smtp:// requires STARTTLS unless the host is loopback (config.ts). Timeouts are bounded so an attempt
 * always ends well inside the delivery lease (service.ts), and no debug logging is ever enabled: nodemailer's
 * would write addresses and bodies.
 */
export function createSmtpTransport(options: SmtpTransportOptions): MailTransport {
  const { smtp, from } = options;
  const domain = fromDomain(from);
  const transporter = createTransport({
    host: smtp.host,
    port: smtp.port,
    secure: smtp.secure,
    requireTLS: smtp.requireTls,
    ...(smtp.user === undefined ? {} : { auth: { user: smtp.user, pass: smtp.password ?? "" } }),
    tls: { minVersion: "TLSv1.2", ...(options.ca === undefined ? {} : { ca: options.ca }) },
    connectionTimeout: 30_000,
    greetingTimeout: 30_000,
    socketTimeout: 60_000,
    logger: false,
    debug: false,
    disableFileAccess: true,
    disableUrlAccess: true,
  });
  return {
    async send(mail) {
      try {
        const info = await transporter.sendMail({
          from,
          to: mail.to,
          subject: mail.subject,
          text: mail.text,
          ...(mail.html === undefined ? {} : { html: mail.html }),
          messageId: `<${mail.messageId}@${domain}>`,
        });
        return { response: scrub(String(info.response ?? "")).slice(0, 200) };
      } catch (error) {
        const e = error as { code?: unknown; responseCode?: unknown; permanent?: unknown };
        const code = typeof e.code === "string" && /^[A-Z_]{1,32}$/.test(e.code) ? e.code : "ERROR";
        const reply = typeof e.responseCode === "number" ? ` ${e.responseCode}` : "";
        throw new MailDeliveryError(mail.messageId, `${code}${reply}`, e.permanent === true);
      }
    },
    close: () => transporter.close(),
  };
}
