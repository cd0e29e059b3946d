import type { Selectable, Updateable } from "kysely";
import { z } from "zod";
import type { Clock } from "../clock.ts";
import { type Binding, DecryptionError } from "../crypto/envelope.ts";
import type { KeyOwner, KeyRing } from "../crypto/key-ring.ts";
import type { Database, Tx } from "../db/index.ts";
import { isUuid, uuidv7 } from "../ids.ts";
import {
  MAIL_CHANNELS,
  MAIL_PURPOSES,
  type MailChannel,
  type MailMessagesTable,
  type MailPurpose,
  type MailStatus,
} from "./schema.ts";
import { MailTemplateError, type RenderedMail, type TemplateRegistry } from "./templates.ts";
import { MailDeliveryError, type MailTransport } from "./transport.ts";

/** Names one message: ids only, so it can ride in a job payload. `tenantId` null: platform mail. */
export interface MessageRef {
  tenantId: string | null;
  messageId: string;
}

/** Who a message goes to: a person in a tenant's CRM, or a person the platform itself serves. */
export type MailRecipient = { tenantId: string; subjectId: string } | { personId: string };

export type OutgoingMessage = MailRecipient & {
  purpose: MailPurpose;
  channel: MailChannel;
  /** The address; stored only as ciphertext under the recipient's key. */
  to: string;
  template: string;
  data: unknown;
};

/** What the pre-send hook sees: ids and metadata, never the address or the data. */
export interface PreSendMessage {
  messageId: string;
  tenantId: string | null;
  subjectId: string | null;
  personId: string | null;
  purpose: MailPurpose;
  channel: MailChannel;
  template: string;
  /** "send": the message is being recorded; "deliver": it is about to leave (consent may have changed). */
  stage: "send" | "deliver";
}

export type PreSendVerdict = { allow: true } | { allow: false; reason: string };

/**
 * The gate every message passes, when it is recorded and again right before delivery: consent and
 * restriction of processing plug in here. It runs in the caller's transaction, so it can read their rows.
 */
export type PreSendHook = (tx: Tx, message: PreSendMessage) => Promise<PreSendVerdict>;

/** Called in the sending transaction for a queued message, so its delivery job commits with it. */
export type EnqueueDelivery = (tx: Tx, ref: MessageRef) => Promise<void>;

export interface MailerOptions {
  db: Database;
  keyRing: KeyRing;
  clock: Clock;
  templates: TemplateRegistry;
  /** Absent: nothing is delivered; messages stay in the outbox (embedded mode without CHARTER_SMTP_URL). */
  transport?: MailTransport;
  preSend?: PreSendHook;
  enqueue?: EnqueueDelivery;
  /** Operational notices (ids only, never an address or a body). */
  warn?: (message: string) => void;
}

export interface SendResult {
  ref: MessageRef;
  status: Extract<MailStatus, "queued" | "outbox" | "suppressed">;
}

/** What one delivery call did; failures throw MailDeliveryError instead, after recording them. */
export type DeliveryOutcome = "sent" | "suppressed" | "skipped";

export interface OutboxEntry {
  tenantId: string | null;
  id: string;
  createdAt: Date;
  purpose: MailPurpose;
  template: string;
  status: MailStatus;
  statusReason: string | null;
  /** Decrypted; undefined when suppressed, or when the recipient's key is destroyed (erased). */
  to: string | undefined;
  /** Rendered; undefined when there is nothing to render or the template is unknown to this build. */
  rendered: RenderedMail | undefined;
}

export interface Mailer {
  /**
   * Records a message in the caller's transaction (rolled back with it) and returns its ref. Nothing is
   * recorded when the input, the template or its data is invalid (MailInputError, MailTemplateError) or the
   * recipient is erased (the key ring's SubjectErasedError); a message the pre-send hook refuses is recorded
   * as suppressed, without its address or data.
   */
  send(tx: Tx, message: OutgoingMessage): Promise<SendResult>;
  /**
   * Delivers one queued message over SMTP (the delivery job calls this). Each step is its own short
   * transaction and the network call sits between them, never inside one. A failure is recorded on the
   * row and rethrown as MailDeliveryError so the job retries.
   */
  deliver(ref: MessageRef): Promise<DeliveryOutcome>;
  /** Messages that were never delivered (outbox and suppressed), newest first, decrypted and rendered. */
  outbox(options?: { limit?: number }): Promise<OutboxEntry[]>;
}

/** A message the caller got wrong: the text names the field, never its value. */
export class MailInputError extends Error {
  override name = "MailInputError";
}

/**
 * A delivery attempt may still be running for this long after it began; a row found "sending" later was
 * interrupted (a crash) and is sent again. The transport's timeouts end every attempt well within it.
 */
export const DELIVERY_LEASE_MS = 10 * 60_000;

/** Statuses whose row still holds an address and data. */
const DELIVERABLE: readonly MailStatus[] = ["queued", "failed", "sending"];

const address = z.email().max(254);

const allow: PreSendHook = async () => ({ allow: true });

/** The two tables as one code path: what differs is the table, its recipient column and the key owner. */
interface Place {
  table: "mail_messages" | "platform_mail_messages";
  tenantId: string | null;
}

const placeOf = (ref: MessageRef): Place =>
  ref.tenantId === null
    ? { table: "platform_mail_messages", tenantId: null }
    : { table: "mail_messages", tenantId: ref.tenantId };

const binding = (place: Place, column: "recipient" | "data", rowId: string): Binding => ({
  tenantId: place.tenantId,
  table: place.table,
  column,
  rowId,
});

function checkMessage(message: OutgoingMessage): {
  place: Place;
  owner: KeyOwner;
  pre: Omit<PreSendMessage, "messageId" | "stage">;
} {
  if (!MAIL_PURPOSES.includes(message.purpose)) {
    throw new MailInputError(`mail purpose must be one of ${MAIL_PURPOSES.join(", ")}`);
  }
  if (!MAIL_CHANNELS.includes(message.channel)) {
    throw new MailInputError(`mail channel must be one of ${MAIL_CHANNELS.join(", ")}`);
  }
  if (typeof message.to !== "string" || !address.safeParse(message.to).success) {
    throw new MailInputError("mail recipient (to) is not a valid email address");
  }
  const common = { purpose: message.purpose, channel: message.channel, template: message.template };
  if ("personId" in message) {
    if (!isUuid(message.personId)) throw new MailInputError("mail personId must be a UUID");
    return {
      place: { table: "platform_mail_messages", tenantId: null },
      owner: { scope: "person", personId: message.personId },
      pre: { ...common, tenantId: null, subjectId: null, personId: message.personId },
    };
  }
  if (!isUuid(message.tenantId)) throw new MailInputError("mail tenantId must be a UUID");
  if (!isUuid(message.subjectId)) throw new MailInputError("mail subjectId must be a UUID");
  return {
    place: { table: "mail_messages", tenantId: message.tenantId },
    owner: { scope: "subject", tenantId: message.tenantId, subjectId: message.subjectId },
    pre: { ...common, tenantId: message.tenantId, subjectId: message.subjectId, personId: null },
  };
}

/** A hook's reason is stored and shown: one line, bounded. */
function reasonText(reason: string): string {
  const line = String(reason).replace(/\s+/g, " ").trim().slice(0, 200);
  return line === "" ? "refused by the pre-send hook" : line;
}

/** The key named by an envelope is destroyed: its owner was erased, or its tenant deleted. */
const isKeyGone = (error: unknown) => error instanceof DecryptionError && error.reason === "unknown-key";

/** A row of either table: tenant rows name a subject, platform rows a person. */
type Row = Omit<Selectable<MailMessagesTable>, "tenant_id" | "subject_id"> & {
  tenant_id?: string;
  subject_id?: string;
  person_id?: string;
};

export function createMailer(options: MailerOptions): Mailer {
  const { db, keyRing, clock, templates, transport } = options;
  const preSend = options.preSend ?? allow;

  const inPlace = <T>(place: Place, fn: (tx: Tx) => Promise<T>): Promise<T> =>
    place.tenantId === null ? db.withPlatform(fn) : db.withTenant({ tenantId: place.tenantId }, fn);

  // Kysely cannot type one query over either of two tables. Both share every column used here, so the
  // queries are typed against the tenant table, with the tenant filter added whenever the place has one.
  const q = (tx: Tx, place: Place) => {
    const table = place.table as "mail_messages";
    const tenantId = place.tenantId;
    return {
      select: (id: string) =>
        tx
          .selectFrom(table)
          .selectAll()
          .where("id", "=", id)
          .$if(tenantId !== null, (b) => b.where("tenant_id", "=", tenantId as string)),
      update: (id: string, values: Updateable<MailMessagesTable>) =>
        tx
          .updateTable(table)
          .set(values)
          .where("id", "=", id)
          .$if(tenantId !== null, (b) => b.where("tenant_id", "=", tenantId as string)),
      listUndelivered: (limit: number) =>
        tx
          .selectFrom(table)
          .selectAll()
          .where("status", "in", ["outbox", "suppressed"])
          .$if(tenantId !== null, (b) => b.where("tenant_id", "=", tenantId as string))
          .orderBy("created_at", "desc")
          .orderBy("id", "desc")
          .limit(limit),
    };
  };

  const preSendMessage = (row: Row, stage: PreSendMessage["stage"]): PreSendMessage => ({
    messageId: row.id,
    tenantId: row.tenant_id ?? null,
    subjectId: row.subject_id ?? null,
    personId: row.person_id ?? null,
    purpose: row.purpose,
    channel: row.channel,
    template: row.template,
    stage,
  });

  async function suppress(tx: Tx, place: Place, id: string, reason: string): Promise<void> {
    await q(tx, place)
      .update(id, { status: "suppressed", status_reason: reasonText(reason), recipient: null, data: null })
      .execute();
  }

  /** Decrypts a row's address and data; undefined when suppressed or the recipient's key is gone (erased). */
  async function decrypt(tx: Tx, place: Place, row: Row): Promise<{ to: string; data: unknown } | undefined> {
    if (row.recipient === null || row.data === null) return undefined;
    try {
      const to = await keyRing.decrypt(tx, row.recipient, binding(place, "recipient", row.id));
      const data = await keyRing.decrypt(tx, row.data, binding(place, "data", row.id));
      return { to, data: JSON.parse(data) };
    } catch (error) {
      if (isKeyGone(error)) return undefined;
      throw error;
    }
  }

  return {
    async send(tx, message) {
      const { place, owner, pre } = checkMessage(message);
      const data = JSON.stringify(templates.parse(message.template, message.data));
      const id = uuidv7(clock.now().getTime());
      // Encrypting first refuses an erased recipient before anything, the hook included, sees the message.
      const recipient = await keyRing.encrypt(tx, owner, message.to, binding(place, "recipient", id));
      const sealedData = await keyRing.encrypt(tx, owner, data, binding(place, "data", id));
      const verdict = await preSend(tx, { ...pre, messageId: id, stage: "send" });
      const status: SendResult["status"] = !verdict.allow ? "suppressed" : transport ? "queued" : "outbox";
      const row = {
        id,
        purpose: message.purpose,
        channel: message.channel,
        template: message.template,
        recipient: verdict.allow ? recipient : null,
        data: verdict.allow ? sealedData : null,
        status,
        status_reason: verdict.allow ? null : reasonText(verdict.reason),
        attempts: 0,
        created_at: clock.now(),
      };
      if ("personId" in message) {
        await tx
          .insertInto("platform_mail_messages")
          .values({ ...row, person_id: message.personId })
          .execute();
      } else {
        await tx
          .insertInto("mail_messages")
          .values({ ...row, tenant_id: message.tenantId, subject_id: message.subjectId })
          .execute();
      }
      const ref = { tenantId: place.tenantId, messageId: id };
      if (status === "queued") await options.enqueue?.(tx, ref);
      return { ref, status };
    },

    async deliver(ref) {
      if (!transport) throw new Error("mail delivery needs an SMTP transport (CHARTER_SMTP_URL)");
      const place = placeOf(ref);
      const now = clock.now();
      // Claim: the row goes to "sending" and commits before the network call, so a retry after a crash
      // sees the attempt and resends only once its lease ran out (with the same Message-ID).
      const claimed = await inPlace(place, async (tx) => {
        const row = (await q(tx, place).select(ref.messageId).forUpdate().executeTakeFirst()) as Row | undefined;
        if (!row || !DELIVERABLE.includes(row.status)) return "skipped" as const;
        if (row.status === "sending") {
          const started = row.last_attempt_at?.getTime() ?? 0;
          if (now.getTime() - started < DELIVERY_LEASE_MS) {
            throw new MailDeliveryError(ref.messageId, "IN_PROGRESS", false);
          }
          options.warn?.(`mail message ${ref.messageId}: an attempt was interrupted; sending it again`);
        }
        const verdict = await preSend(tx, preSendMessage(row, "deliver"));
        if (!verdict.allow) {
          await suppress(tx, place, row.id, verdict.reason);
          return "suppressed" as const;
        }
        const opened = await decrypt(tx, place, row);
        if (!opened) {
          await suppress(tx, place, row.id, "the recipient was erased");
          return "suppressed" as const;
        }
        let rendered: RenderedMail;
        try {
          rendered = templates.render(row.template, opened.data);
        } catch (error) {
          if (!(error instanceof MailTemplateError)) throw error;
          // The template changed or went away since the message was recorded: no retry renders it.
          await q(tx, place).update(row.id, { status: "failed", status_reason: "TEMPLATE" }).execute();
          return new MailDeliveryError(row.id, "TEMPLATE", true);
        }
        await q(tx, place)
          .update(row.id, {
            status: "sending",
            status_reason: null,
            attempts: row.attempts + 1,
            last_attempt_at: now,
          })
          .execute();
        return { to: opened.to, rendered };
      });
      if (typeof claimed === "string") return claimed;
      if (claimed instanceof MailDeliveryError) throw claimed;

      let response: string;
      try {
        ({ response } = await transport.send({ messageId: ref.messageId, to: claimed.to, ...claimed.rendered }));
      } catch (error) {
        const failure =
          error instanceof MailDeliveryError ? error : new MailDeliveryError(ref.messageId, "ERROR", false);
        await inPlace(place, (tx) =>
          q(tx, place).update(ref.messageId, { status: "failed", status_reason: failure.reason }).execute(),
        );
        throw failure;
      }
      await inPlace(place, (tx) =>
        q(tx, place)
          .update(ref.messageId, { status: "sent", sent_at: clock.now(), provider_response: response })
          .execute(),
      );
      return "sent";
    },

    async outbox({ limit = 50 } = {}) {
      const entries: OutboxEntry[] = [];
      const read = async (tx: Tx, place: Place) => {
        const rows = (await q(tx, place).listUndelivered(limit).execute()) as Row[];
        for (const row of rows) {
          const opened = await decrypt(tx, place, row);
          let rendered: RenderedMail | undefined;
          try {
            rendered = opened && templates.render(row.template, opened.data);
          } catch (error) {
            if (!(error instanceof MailTemplateError)) throw error;
          }
          entries.push({
            tenantId: place.tenantId,
            id: row.id,
            createdAt: row.created_at,
            purpose: row.purpose,
            template: row.template,
            status: row.status,
            statusReason: row.status_reason,
            to: opened?.to,
            rendered,
          });
        }
      };
      await db.withSnapshot(async (snapshot) => {
        await read(snapshot.tx, { table: "platform_mail_messages", tenantId: null });
        await snapshot.forEachTenant((tenantId, tx) => read(tx, { table: "mail_messages", tenantId }));
      });
      return entries
        .sort((a, b) => b.createdAt.getTime() - a.createdAt.getTime() || (a.id < b.id ? 1 : -1))
        .slice(0, limit);
    },
  };
}
