import { readFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestCertificate, type TestCertificate } from "../../../test/support/certs.ts";
import { freePort } from "../../../test/support/cli.ts";
import type { SmtpConfig } from "../../config.ts";
import { uuidv7 } from "../ids.ts";
import { startSmtpSink } from "./testing.ts";
import { createSmtpTransport, MailDeliveryError, type OutgoingMail } from "./transport.ts";

const FROM = "Charter <no-reply@charter.example>";

const plainSmtp = (port: number, extra: Partial<SmtpConfig> = {}): SmtpConfig => ({
  host: "127.0.0.1",
  port,
  secure: false,
  requireTls: false,
  user: undefined,
  password: undefined,
  ...extra,
});

const mail = (to = "ada@example.com"): OutgoingMail => ({
  messageId: uuidv7(),
  to,
  subject: "Hello Ada",
  text: "The quarterly report is ready.",
  html: "<p>The quarterly report is ready.</p>",
});

async function failure(promise: Promise<unknown>): Promise<MailDeliveryError> {
  const error = await promise.then(
    () => undefined,
    (caught: unknown) => caught,
  );
  expect(error).toBeInstanceOf(MailDeliveryError);
  return error as MailDeliveryError;
}

describe("SMTP transport", () => {
  let cert: TestCertificate;
  let tls: { key: Buffer; cert: Buffer };
  beforeAll(() => {
    cert = createTestCertificate();
    tls = { key: readFileSync(cert.keyPath), cert: readFileSync(cert.certPath) };
  });
  afterAll(() => cert?.remove());

  it("delivers to a loopback server without TLS: envelope, headers, text and HTML, a stable Message-ID", async () => {
    const sink = await startSmtpSink();
    const transport = createSmtpTransport({ smtp: plainSmtp(sink.port), from: FROM });
    try {
      const message = mail();
      const { response } = await transport.send(message);
      expect(response).toMatch(/^250/);
      expect(sink.received).toHaveLength(1);
      const [got] = sink.received;
      expect(got).toMatchObject({ from: "no-reply@charter.example", to: ["ada@example.com"], secure: false });
      expect(got?.raw).toMatch(/^To: ada@example\.com\r$/m);
      expect(got?.raw).toMatch(/^Subject: Hello Ada\r$/m);
      expect(got?.raw).toMatch(new RegExp(`^Message-ID: <${message.messageId}@charter\\.example>\\r$`, "m"));
      expect(got?.raw).toContain("The quarterly report is ready.");
      expect(got?.raw).toContain("<p>The quarterly report is ready.</p>");
    } finally {
      transport.close();
      await sink.close();
    }
  });

  it("smtps: TLS from the first byte, with the server's certificate trusted explicitly", async () => {
    const sink = await startSmtpSink({ secure: true, ...tls });
    const trusting = createSmtpTransport({ smtp: plainSmtp(sink.port, { secure: true }), from: FROM, ca: tls.cert });
    const untrusting = createSmtpTransport({ smtp: plainSmtp(sink.port, { secure: true }), from: FROM });
    try {
      await trusting.send(mail());
      expect(sink.received.map((m) => m.secure)).toEqual([true]);
      // The certificate is verified: without trusting it, nothing is sent.
      expect((await failure(untrusting.send(mail()))).permanent).toBe(false);
      expect(sink.received).toHaveLength(1);
    } finally {
      trusting.close();
      untrusting.close();
      await sink.close();
    }
  });

  it("requireTls: STARTTLS is used when offered, and a server that does not offer it gets nothing", async () => {
    const starttls = await startSmtpSink(tls);
    const plain = await startSmtpSink();
    const good = createSmtpTransport({
      smtp: plainSmtp(starttls.port, { requireTls: true }),
      from: FROM,
      ca: tls.cert,
    });
    const refused = createSmtpTransport({ smtp: plainSmtp(plain.port, { requireTls: true }), from: FROM });
    try {
      await good.send(mail());
      expect(starttls.received.map((m) => m.secure)).toEqual([true]);
      await failure(refused.send(mail()));
      expect(plain.received).toEqual([]);
    } finally {
      good.close();
      refused.close();
      await starttls.close();
      await plain.close();
    }
  });

  it("a rejected recipient: a permanent MailDeliveryError with the codes only, never the address", async () => {
    const sink = await startSmtpSink({ reject: ["nobody@example.com"] });
    const transport = createSmtpTransport({ smtp: plainSmtp(sink.port), from: FROM });
    try {
      const error = await failure(transport.send(mail("nobody@example.com")));
      expect(error.permanent).toBe(true);
      expect(error.reason).toBe("EENVELOPE 550");
      expect(error.message).not.toContain("nobody");
      expect(error.cause).toBeUndefined();
      expect(JSON.stringify(error)).not.toContain("nobody");
      expect(sink.received).toEqual([]);
    } finally {
      transport.close();
      await sink.close();
    }
  });

  it("a server that is down: a transient MailDeliveryError", async () => {
    const transport = createSmtpTransport({ smtp: plainSmtp(await freePort()), from: FROM });
    try {
      const error = await failure(transport.send(mail()));
      expect(error.permanent).toBe(false);
      expect(error.reason).toMatch(/^(ECONNECTION|ESOCKET)$/);
    } finally {
      transport.close();
    }
  });
});
