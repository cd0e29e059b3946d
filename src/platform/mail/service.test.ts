import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { DATABASE_KINDS, openTestDatabase, type TestDatabase } from "../../../test/support/databases.ts";
import { createTestAudit } from "../audit/testing.ts";
import { manualClock } from "../clock.ts";
import { SubjectErasedError } from "../crypto/key-ring.ts";
import { createTestKeyRing, type TestKeyRing } from "../crypto/testing.ts";
import type { Tx } from "../db/index.ts";
import { uuidv7 } from "../ids.ts";
import { createTenant, type Tenant } from "../tenancy/tenants.ts";
import {
  createMailer,
  DELIVERY_LEASE_MS,
  type Mailer,
  type MailerOptions,
  MailInputError,
  type MessageRef,
  type PreSendMessage,
} from "./service.ts";
import { createTemplateRegistry, defineTemplate, html, MailTemplateError, PLATFORM_TEMPLATES } from "./templates.ts";
import { type SmtpSink, startSmtpSink } from "./testing.ts";
import { createSmtpTransport, MailDeliveryError, type MailTransport } from "./transport.ts";

/** Must never be stored in plain text: the later leak test writes one like it into a queued mail. */
const MARKER = "MARKER-7f3a9c-quarterly";

const report = defineTemplate({
  name: "report-ready",
  data: z.object({ name: z.string().min(1), note: z.string() }),
  render: ({ name, note }) => ({
    subject: `Report for ${name}`,
    text: `Hello ${name}, ${note}`,
    html: html`<p>Hello ${name}, ${note}</p>`.markup,
  }),
});
const templates = createTemplateRegistry([report, ...PLATFORM_TEMPLATES]);

const FROM = "Charter <no-reply@charter.example>";

describe.each(DATABASE_KINDS)("mail on %s", (kind) => {
  let t: TestDatabase;
  let keyRing: TestKeyRing;
  let tenant: Tenant;
  let sink: SmtpSink;
  let smtp: MailTransport;
  const clock = manualClock("2026-04-01T09:00:00Z");
  const open: MailTransport[] = [];

  beforeAll(async () => {
    t = await openTestDatabase(kind);
    keyRing = createTestKeyRing(t.db, clock);
    tenant = await createTenant(
      t.db,
      clock,
      { slug: `t-${uuidv7().slice(-12)}`, name: "Acme" },
      keyRing,
      createTestAudit(t.db, keyRing),
    );
    sink = await startSmtpSink({ reject: ["nobody@example.com"] });
    smtp = transportTo(sink.port);
  });
  afterEach(() => {
    sink.received.length = 0;
  });
  afterAll(async () => {
    for (const transport of open) transport.close();
    await sink?.close();
    await t?.close();
  });

  function transportTo(port: number): MailTransport {
    const transport = createSmtpTransport({
      smtp: { host: "127.0.0.1", port, secure: false, requireTls: false, user: undefined, password: undefined },
      from: FROM,
    });
    open.push(transport);
    return transport;
  }

  const mailer = (options: Partial<MailerOptions> = {}): Mailer =>
    createMailer({ db: t.db, keyRing, clock, templates, transport: smtp, ...options });
  const inTenant = <T>(fn: (tx: Tx) => Promise<T>) => t.db.withTenant({ tenantId: tenant.id }, fn);
  const toSubject = (subjectId: string, to = "ada@example.com", note = MARKER) => ({
    tenantId: tenant.id,
    subjectId,
    purpose: "transactional" as const,
    channel: "email" as const,
    to,
    template: "report-ready",
    data: { name: "Ada", note },
  });
  const rawRows = async (table: string, id: string) =>
    (await t.superuser(`SELECT * FROM ${table} WHERE id = '${id}'`)) as Record<string, unknown>[];
  const rowOf = async (ref: MessageRef) =>
    (await rawRows(ref.tenantId === null ? "platform_mail_messages" : "mail_messages", ref.messageId))[0];
  const counts = async () => {
    const [row] = (await t.superuser(
      "SELECT (SELECT count(*) FROM mail_messages)::int AS tenant, (SELECT count(*) FROM platform_mail_messages)::int AS platform",
    )) as { tenant: number; platform: number }[];
    return row;
  };

  it("send in a transaction that rolls back records nothing; committed, the address and data are only ciphertext", async () => {
    const before = await counts();
    const rollback = new Error("rolled back");
    await expect(
      inTenant(async (tx) => {
        await mailer().send(tx, toSubject(uuidv7()));
        throw rollback;
      }),
    ).rejects.toBe(rollback);
    expect(await counts()).toEqual(before);

    const subjectId = uuidv7();
    const { ref, status } = await inTenant((tx) => mailer().send(tx, toSubject(subjectId)));
    expect(status).toBe("queued");
    expect(ref).toEqual({ tenantId: tenant.id, messageId: expect.any(String) });
    const row = await rowOf(ref);
    expect(row).toMatchObject({
      tenant_id: tenant.id,
      subject_id: subjectId,
      purpose: "transactional",
      channel: "email",
      template: "report-ready",
      status: "queued",
      status_reason: null,
      attempts: 0,
      sent_at: null,
    });
    expect(new Date(row?.created_at as string).toISOString()).toBe(clock.now().toISOString());
    expect(row?.recipient).toMatch(/^v1\./);
    expect(row?.data).toMatch(/^v1\./);
    const raw = JSON.stringify(row);
    expect(raw).not.toContain("ada@example.com");
    expect(raw).not.toContain(MARKER);
    expect(raw).not.toContain("Ada");
  });

  it("enqueues the delivery in the sending transaction, with ids only", async () => {
    const enqueued: { ref: MessageRef; tx: Tx }[] = [];
    let sendingTx: Tx | undefined;
    const { ref } = await inTenant(async (tx) => {
      sendingTx = tx;
      return mailer({ enqueue: async (enqueueTx, r) => void enqueued.push({ ref: r, tx: enqueueTx }) }).send(
        tx,
        toSubject(uuidv7()),
      );
    });
    expect(enqueued).toHaveLength(1);
    expect(enqueued[0]?.ref).toEqual(ref);
    expect(Object.keys(enqueued[0]?.ref ?? {}).sort()).toEqual(["messageId", "tenantId"]);
    expect(enqueued[0]?.tx).toBe(sendingTx);
  });

  it("delivers a queued message over SMTP: the server gets recipient, subject and body; the row becomes sent", async () => {
    const m = mailer();
    const { ref } = await inTenant((tx) => m.send(tx, toSubject(uuidv7(), "grace@example.com")));
    clock.advance(1000);
    expect(await m.deliver(ref)).toBe("sent");
    expect(sink.received).toHaveLength(1);
    const [got] = sink.received;
    expect(got?.to).toEqual(["grace@example.com"]);
    expect(got?.raw).toMatch(/^Subject: Report for Ada\r$/m);
    expect(got?.raw).toContain(`Hello Ada, ${MARKER}`);
    expect(got?.raw).toMatch(new RegExp(`^Message-ID: <${ref.messageId}@charter\\.example>\\r$`, "m"));
    const row = await rowOf(ref);
    expect(row).toMatchObject({ status: "sent", attempts: 1, status_reason: null });
    expect(new Date(row?.sent_at as string).toISOString()).toBe(clock.now().toISOString());
    expect(row?.provider_response).toMatch(/^250/);

    // Delivered once: a second call (a duplicate job) sends nothing.
    expect(await m.deliver(ref)).toBe("skipped");
    expect(sink.received).toHaveLength(1);
  });

  it("platform mail to a person uses the platform table, encrypted under the person's key, and is delivered", async () => {
    const m = mailer();
    const personId = uuidv7();
    const { ref, status } = await t.db.withPlatform((tx) =>
      m.send(tx, {
        personId,
        purpose: "security",
        channel: "email",
        to: "lin@example.com",
        template: "sign-in-code",
        data: { code: "481516", minutes: 10 },
      }),
    );
    expect(status).toBe("queued");
    expect(ref.tenantId).toBeNull();
    const row = await rowOf(ref);
    expect(row).toMatchObject({ person_id: personId, purpose: "security", status: "queued" });
    expect(JSON.stringify(row)).not.toMatch(/lin@example\.com|481516/);

    expect(await m.deliver(ref)).toBe("sent");
    expect(sink.received.map((r) => r.to)).toEqual([["lin@example.com"]]);
    expect(sink.received[0]?.raw).toContain("481516");
    expect((await rowOf(ref))?.status).toBe("sent");
  });

  it("a message the pre-send hook refuses is suppressed with its reason, without address or data, and never sent", async () => {
    const seen: PreSendMessage[] = [];
    const m = mailer({
      preSend: async (_tx, message) => {
        seen.push(message);
        return { allow: false, reason: "no consent\nfor this purpose" };
      },
    });
    const subjectId = uuidv7();
    const { ref, status } = await inTenant((tx) => m.send(tx, { ...toSubject(subjectId), purpose: "marketing" }));
    expect(status).toBe("suppressed");
    expect(seen).toEqual([
      {
        messageId: ref.messageId,
        tenantId: tenant.id,
        subjectId,
        personId: null,
        purpose: "marketing",
        channel: "email",
        template: "report-ready",
        stage: "send",
      },
    ]);
    expect(await rowOf(ref)).toMatchObject({
      status: "suppressed",
      status_reason: "no consent for this purpose",
      recipient: null,
      data: null,
    });
    expect(await m.deliver(ref)).toBe("skipped");
    expect(sink.received).toEqual([]);
  });

  it("the hook is asked again at delivery: a refusal then suppresses the queued message and clears it", async () => {
    let allow = true;
    const m = mailer({
      preSend: async () => (allow ? { allow: true } : { allow: false, reason: "processing restricted" }),
    });
    const { ref } = await inTenant((tx) => m.send(tx, toSubject(uuidv7())));
    allow = false;
    expect(await m.deliver(ref)).toBe("suppressed");
    expect(sink.received).toEqual([]);
    expect(await rowOf(ref)).toMatchObject({
      status: "suppressed",
      status_reason: "processing restricted",
      recipient: null,
      data: null,
      attempts: 0,
    });
  });

  it("a rejected recipient is recorded as failed and rethrown as permanent, without the address", async () => {
    const m = mailer();
    const { ref } = await inTenant((tx) => m.send(tx, toSubject(uuidv7(), "nobody@example.com")));
    const error = await m.deliver(ref).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(MailDeliveryError);
    expect(error).toMatchObject({ permanent: true, reason: "EENVELOPE 550" });
    expect(String((error as Error).message)).not.toContain("nobody");
    expect(await rowOf(ref)).toMatchObject({ status: "failed", status_reason: "EENVELOPE 550", attempts: 1 });
    expect(sink.received).toEqual([]);
  });

  it("a server that is down: failed and rethrown; the retry delivers", async () => {
    const down = await startSmtpSink();
    const port = down.port;
    await down.close();
    const { ref } = await inTenant((tx) => mailer({ transport: transportTo(port) }).send(tx, toSubject(uuidv7())));
    const error = await mailer({ transport: transportTo(port) })
      .deliver(ref)
      .catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(MailDeliveryError);
    expect((error as MailDeliveryError).permanent).toBe(false);
    const failed = await rowOf(ref);
    expect(failed).toMatchObject({ status: "failed", attempts: 1 });
    expect(failed?.status_reason).toMatch(/^(ECONNECTION|ESOCKET)$/);

    expect(await mailer().deliver(ref)).toBe("sent");
    expect(sink.received).toHaveLength(1);
    expect(await rowOf(ref)).toMatchObject({ status: "sent", attempts: 2, status_reason: null });
  });

  it("a message its template can no longer render fails for good at delivery, without reaching the server", async () => {
    const { ref } = await inTenant((tx) => mailer().send(tx, toSubject(uuidv7())));
    const withoutTemplate = mailer({ templates: createTemplateRegistry(PLATFORM_TEMPLATES) });
    await expect(withoutTemplate.deliver(ref)).rejects.toMatchObject({ reason: "TEMPLATE", permanent: true });
    expect(sink.received).toEqual([]);
    expect(await rowOf(ref)).toMatchObject({ status: "failed", status_reason: "TEMPLATE", attempts: 0 });
  });

  it("an interrupted attempt is not resent within its lease, and is resent after it, once, with the same Message-ID", async () => {
    const warnings: string[] = [];
    const hanging: MailTransport = { send: () => new Promise(() => {}), close: () => {} };
    const { ref } = await inTenant((tx) => mailer().send(tx, toSubject(uuidv7(), "ida@example.com")));
    // The process "dies" after claiming the message: the send never returns.
    void mailer({ transport: hanging }).deliver(ref);
    await expect.poll(async () => (await rowOf(ref))?.status).toBe("sending");

    const retry = mailer({ warn: (message) => warnings.push(message) });
    await expect(retry.deliver(ref)).rejects.toMatchObject({ reason: "IN_PROGRESS", permanent: false });
    expect(sink.received).toEqual([]);

    clock.advance(DELIVERY_LEASE_MS + 1);
    expect(await retry.deliver(ref)).toBe("sent");
    expect(sink.received).toHaveLength(1);
    expect(sink.received[0]?.raw).toContain(`Message-ID: <${ref.messageId}@charter.example>`);
    expect(await rowOf(ref)).toMatchObject({ status: "sent", attempts: 2 });
    expect(warnings).toEqual([`mail message ${ref.messageId}: an attempt was interrupted; sending it again`]);
  });

  it("outbox mode: without a transport messages stay in the outbox, listed newest first, decrypted and rendered", async () => {
    const outboxMailer = mailer({ transport: undefined });
    clock.advance(60_000);
    const first = await inTenant((tx) => outboxMailer.send(tx, toSubject(uuidv7(), "olga@example.com", "first")));
    clock.advance(60_000);
    const second = await t.db.withPlatform((tx) =>
      outboxMailer.send(tx, {
        personId: uuidv7(),
        purpose: "security",
        channel: "email",
        to: "pia@example.com",
        template: "sign-in-code",
        data: { code: "271828", minutes: 5 },
      }),
    );
    expect([first.status, second.status]).toEqual(["outbox", "outbox"]);
    expect(JSON.stringify(await rowOf(first.ref))).not.toContain("olga");

    const listed = await outboxMailer.outbox();
    const mine = listed.filter((e) => e.id === first.ref.messageId || e.id === second.ref.messageId);
    expect(mine).toEqual([
      {
        tenantId: null,
        id: second.ref.messageId,
        createdAt: clock.now(),
        purpose: "security",
        template: "sign-in-code",
        status: "outbox",
        statusReason: null,
        to: "pia@example.com",
        rendered: expect.objectContaining({
          subject: "Your Charter sign-in code",
          text: expect.stringContaining("271828"),
        }),
      },
      expect.objectContaining({
        tenantId: tenant.id,
        id: first.ref.messageId,
        to: "olga@example.com",
        rendered: expect.objectContaining({ subject: "Report for Ada", text: "Hello Ada, first" }),
      }),
    ]);
    // Suppressed messages are listed too (the developer's answer to "where is my mail?"), without an address.
    expect(listed.some((e) => e.status === "suppressed" && e.to === undefined && e.statusReason !== null)).toBe(true);
    expect(listed.every((e) => e.status === "outbox" || e.status === "suppressed")).toBe(true);
    expect(await outboxMailer.outbox({ limit: 1 })).toHaveLength(1);
  });

  it("bad input records nothing: unknown template, invalid data, a bad address or id", async () => {
    const before = await counts();
    const m = mailer();
    const attempt = (patch: object) => inTenant((tx) => m.send(tx, { ...toSubject(uuidv7()), ...patch }));
    await expect(attempt({ template: "no-such-template" })).rejects.toThrow(
      new MailTemplateError('unknown mail template "no-such-template"'),
    );
    await expect(attempt({ data: { name: "" } })).rejects.toThrow(
      /invalid data for mail template "report-ready": name: too_small; note: invalid_type/,
    );
    await expect(attempt({ to: "not an address" })).rejects.toThrow(
      new MailInputError("mail recipient (to) is not a valid email address"),
    );
    await expect(attempt({ to: "ada@example.com\r\nBcc: eve@example.com" })).rejects.toThrow(MailInputError);
    await expect(attempt({ subjectId: "42" })).rejects.toThrow(new MailInputError("mail subjectId must be a UUID"));
    await expect(attempt({ purpose: "newsletter" })).rejects.toThrow(/mail purpose must be one of/);
    await expect(attempt({ channel: "sms" })).rejects.toThrow(/mail channel must be one of/);
    expect(await counts()).toEqual(before);
  });

  it("an erased subject or person: send is refused and records nothing; mail queued before the erasure is suppressed", async () => {
    const m = mailer();
    const subjectId = uuidv7();
    const queued = await inTenant((tx) => m.send(tx, toSubject(subjectId)));
    await inTenant((tx) => keyRing.eraseSubject(tx, { tenantId: tenant.id, subjectId, reason: "erasure-request" }));
    const before = await counts();
    await expect(inTenant((tx) => m.send(tx, toSubject(subjectId)))).rejects.toBeInstanceOf(SubjectErasedError);

    const personId = uuidv7();
    await t.db.withPlatform((tx) => keyRing.erasePerson(tx, { personId, reason: "erasure-request" }));
    await expect(
      t.db.withPlatform((tx) =>
        m.send(tx, {
          personId,
          purpose: "security",
          channel: "email",
          to: "x@example.com",
          template: "sign-in-code",
          data: { code: "123456", minutes: 5 },
        }),
      ),
    ).rejects.toBeInstanceOf(SubjectErasedError);
    expect(await counts()).toEqual(before);

    expect(await m.deliver(queued.ref)).toBe("suppressed");
    expect(sink.received).toEqual([]);
    expect(await rowOf(queued.ref)).toMatchObject({
      status: "suppressed",
      status_reason: "the recipient was erased",
      recipient: null,
      data: null,
    });
  });
});
