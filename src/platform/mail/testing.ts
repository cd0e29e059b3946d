import type { AddressInfo } from "node:net";
import { SMTPServer, type SMTPServerOptions } from "smtp-server";

/** A message the test server accepted. */
export interface ReceivedMail {
  from: string | undefined;
  to: string[];
  /** The raw RFC 5322 message as it arrived. */
  raw: string;
  /** Whether the session was encrypted (smtps, or after STARTTLS). */
  secure: boolean;
}

export interface SmtpSink {
  port: number;
  received: ReceivedMail[];
  close(): Promise<void>;
}

/**
 * A real SMTP server on 127.0.0.1 and a free port, for tests: records what it accepts, and answers 550 for
 * any recipient in `reject`. Pass `key`/`cert` (and `secure`) to test TLS.
 */
export async function startSmtpSink(
  options: Pick<SMTPServerOptions, "secure" | "key" | "cert" | "hideSTARTTLS"> & { reject?: string[] } = {},
): Promise<SmtpSink> {
  const received: ReceivedMail[] = [];
  const reject = new Set(options.reject ?? []);
  const server = new SMTPServer({
    ...options,
    logger: false,
    authOptional: true,
    ...(options.key ? {} : { disabledCommands: ["STARTTLS"] }),
    onRcptTo(address, _session, callback) {
      if (!reject.has(address.address)) return callback();
      const error = Object.assign(new Error(`5.1.1 <${address.address}>: Recipient address rejected`), {
        responseCode: 550,
      });
      callback(error);
    },
    onData(stream, session, callback) {
      const chunks: Buffer[] = [];
      stream.on("data", (chunk: Buffer) => chunks.push(chunk));
      stream.on("end", () => {
        received.push({
          from: session.envelope.mailFrom ? session.envelope.mailFrom.address : undefined,
          to: session.envelope.rcptTo.map((r) => r.address),
          raw: Buffer.concat(chunks).toString("utf8"),
          secure: session.secure,
        });
        callback();
      });
    },
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const port = (server.server.address() as AddressInfo).port;
  return { port, received, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}
