/**
 * The writing half of test/encryption-at-rest.test.ts, run as a process of its own so that the logs the test
 * searches are the real ones: everything Charter writes to its standard output and standard error.
 *
 *   node test/support/at-rest-server.ts <plan.json> <result.json>
 *
 * with Charter's configuration in the environment (CHARTER_SMTP_URL pointing at the test's SMTP sink). It
 * starts the server, writes the plan's markers through the platform services and, for the accounts, through
 * the HTTP API as a browser would, lets the jobs run, reads every encrypted value back, shuts the server down
 * and writes what it read to the result file.
 */
import { randomBytes } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { loadConfig } from "../../src/config.ts";
import { emailChangeConfirm, verifyEmail } from "../../src/modules/identity/account-mail.ts";
import { sessionCookieName } from "../../src/modules/identity/cookies.ts";
import { invitationMail } from "../../src/modules/identity/member-mail.ts";
import { systemClock } from "../../src/platform/clock.ts";
import type { Binding } from "../../src/platform/crypto/envelope.ts";
import type { KeyRing } from "../../src/platform/crypto/key-ring.ts";
import type { Tx } from "../../src/platform/db/index.ts";
import { newBlobKey } from "../../src/platform/files/blob-store.ts";
import type { FileOwner } from "../../src/platform/files/index.ts";
import { uuidv7 } from "../../src/platform/ids.ts";
import type { Jobs } from "../../src/platform/jobs/index.ts";
import { eventually } from "../../src/platform/jobs/testing.ts";
import type { MessageRef } from "../../src/platform/mail/index.ts";
import { PLATFORM_JOBS } from "../../src/platform/services.ts";
import { createTenant } from "../../src/platform/tenancy/tenants.ts";
import { type RunningServer, startServer } from "../../src/server.ts";

/** Values that must never be stored or logged in plain text; each is unique to one run. */
export interface SecretMarkers {
  /** Local parts of the recipients' addresses (…@example.com). */
  tenantMailLocalPart: string;
  platformMailLocalPart: string;
  /** The sign-in-code template's `code` (digits only, as its schema demands). */
  tenantMailCode: string;
  platformMailCode: string;
  subjectFileName: string;
  subjectFileContent: string;
  tenantFileName: string;
  tenantFileContent: string;
  platformFileName: string;
  platformFileContent: string;
  personFileName: string;
  personFileContent: string;
  /** Personal details of an audit event, on a tenant chain (subject key) and a platform chain (person key). */
  tenantAuditDetail: string;
  platformAuditDetail: string;
  /** Quoted by a failing job handler's error message, as a handler's error may quote what it worked on. */
  jobError: string;
  /** Local parts of the addresses the HTTP API is given: the sign-up, the email change, the invitation. */
  accountLocalPart: string;
  newAddressLocalPart: string;
  inviteeLocalPart: string;
  /** The account's password: not an encrypted column but a secret stored nowhere, only its Argon2id hash. */
  password: string;
  /** The client secret of a tenant's SSO configuration, given to the HTTP API. */
  ssoClientSecret: string;
  /** Stands for the PKCE verifier and nonce an SSO sign-in keeps while the browser is at the provider. */
  ssoChecks: string;
}

/** Values written in plain text on purpose, one per place searched: the positive controls. */
export interface ControlMarkers {
  /** The tenant's name (a plain-text column): the database places. */
  tenantName: string;
  /** A job's singleton key, which pg-boss keeps as it is: pg-boss's rows. */
  singletonKey: string;
  /** A blob put into the blob store as it is: the file store. */
  blob: string;
  /** A request path, which the request log keeps: the logs. */
  requestPath: string;
}

export interface AtRestPlan {
  secret: SecretMarkers;
  control: ControlMarkers;
}

export interface AtRestResult {
  /** Each encrypted column written (`table.column`) → what was decrypted from it after the jobs ran. */
  readBack: Record<string, string[]>;
  /** The final pg-boss state of each job the run enqueued, by job kind. */
  jobStates: Record<string, string[]>;
  /**
   * Secrets the server handed out during the run (the session cookie, the tokens of the mailed links), which
   * must be stored nowhere but hashed, or sealed in the mail that carries them, and never logged.
   */
  issued: Record<string, string>;
}

/** Job kinds of this run only: one whose handler fails quoting a marker, one that carries the control key. */
const FAILING_JOB = "test.at-rest-fails";
const CONTROL_JOB = "test.at-rest-control";

const address = (localPart: string) => `${localPart}@example.com`;

/** Every job the run enqueues: five deliveries (two sent directly, three by the accounts), two of this run. */
const JOB_COUNT = 7;

const mailTable = (ref: MessageRef) => (ref.tenantId === null ? "platform_mail_messages" : "mail_messages");

/** The newest message of `template` in the place of `tenantId` (each run starts from an empty database). */
async function latestMail(tx: Tx, tenantId: string | null, template: string): Promise<MessageRef> {
  const row = await (tenantId === null
    ? tx.selectFrom("platform_mail_messages").select("id").where("template", "=", template).orderBy("id", "desc")
    : tx
        .selectFrom("mail_messages")
        .select("id")
        .where("tenant_id", "=", tenantId)
        .where("template", "=", template)
        .orderBy("id", "desc")
  ).executeTakeFirstOrThrow();
  return { tenantId, messageId: row.id };
}

/** A message's sealed columns, opened; a column a suppressed message no longer holds is left out. */
async function openMail(
  tx: Tx,
  keyRing: KeyRing,
  ref: MessageRef,
): Promise<Partial<Record<"recipient" | "data", string>>> {
  const { tenantId, messageId: id } = ref;
  const table = mailTable(ref);
  const row = await (tenantId === null
    ? tx.selectFrom("platform_mail_messages").select(["recipient", "data"]).where("id", "=", id)
    : tx
        .selectFrom("mail_messages")
        .select(["recipient", "data"])
        .where("tenant_id", "=", tenantId)
        .where("id", "=", id)
  ).executeTakeFirstOrThrow();
  const opened: Partial<Record<"recipient" | "data", string>> = {};
  for (const column of ["recipient", "data"] as const) {
    const envelope = row[column];
    if (envelope === null) continue;
    const binding: Binding = { tenantId, table, column, rowId: id };
    opened[column] = await keyRing.decrypt(tx, envelope, binding);
  }
  return opened;
}

/** The token in the fragment of the link a message carries (…#token=…), as the web page would read it. */
function mailedToken(opened: { data?: string }): string {
  if (opened.data === undefined) throw new Error("the message holds no data");
  const { link } = JSON.parse(opened.data) as { link: string };
  const token = new URLSearchParams(new URL(link).hash.slice(1)).get("token");
  if (!token) throw new Error("the message's link carries no token");
  return token;
}

/** What the accounts' part of the run left to read back once the jobs ran. */
interface AccountWrites {
  userId: string;
  tenantId: string;
  invitationId: string;
  ssoConfigurationId: string;
  mails: MessageRef[];
  issued: Record<string, string>;
}

/**
 * Writes the identity columns as a person using the web app would, through the server's HTTP API: signs up
 * (users.email), verifies the address with the mailed link, signs in, creates an organization, asks to move
 * the account to another address (account_tokens.email) and invites someone (invitations.email). Unsafe
 * requests carry `Sec-Fetch-Site: same-origin`, as a browser labels those of the app's own pages.
 */
async function writeAccounts(server: RunningServer, publicUrl: URL, secret: SecretMarkers): Promise<AccountWrites> {
  const { db, services } = server;
  const { keyRing } = services;
  const cookieName = sessionCookieName(publicUrl);
  let session: string | undefined;
  const call = async (method: string, path: string, expected: number, body?: unknown): Promise<Response> => {
    const response = await fetch(`${server.url}${path}`, {
      method,
      headers: {
        "sec-fetch-site": "same-origin",
        ...(body === undefined ? {} : { "content-type": "application/json" }),
        ...(session === undefined ? {} : { cookie: `${cookieName}=${session}` }),
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    if (response.status !== expected) {
      throw new Error(`${method} ${path} answered ${response.status}, not ${expected}: ${await response.text()}`);
    }
    return response;
  };
  const json = async <T>(response: Response) => (await response.json()) as T;
  const tokenMailed = async (tenantId: string | null, template: string) => {
    const read = async (tx: Tx) => {
      const ref = await latestMail(tx, tenantId, template);
      return { ref, token: mailedToken(await openMail(tx, keyRing, ref)) };
    };
    return tenantId === null ? db.withPlatform(read) : db.withTenant({ tenantId }, read);
  };

  const email = address(secret.accountLocalPart);
  await call("POST", "/api/v1/accounts", 202, { email, displayName: "Ada At Rest", password: secret.password });
  const verification = await tokenMailed(null, verifyEmail.name);
  await call("POST", "/api/v1/accounts/verify-email", 204, { token: verification.token });

  const signIn = await call("POST", "/api/v1/sessions", 200, { email, password: secret.password });
  const cookie = signIn.headers.getSetCookie().find((c) => c.startsWith(`${cookieName}=`));
  session = cookie?.slice(cookieName.length + 1).split(";")[0];
  if (!session) throw new Error(`signing in set no ${cookieName} cookie`);
  const { id: userId } = await json<{ id: string }>(await call("GET", "/api/v1/me", 200));

  const tenant = await json<{ id: string }>(
    await call("POST", "/api/v1/tenants", 201, { slug: `at-rest-api-${uuidv7().slice(-12)}`, name: "At Rest Ltd" }),
  );
  // A fresh sign-in is the recent authentication an email change asks for.
  await call("POST", "/api/v1/me/email", 202, { newEmail: address(secret.newAddressLocalPart) });
  const change = await tokenMailed(null, emailChangeConfirm.name);
  const invitation = await json<{ id: string }>(
    await call("POST", `/api/v1/tenants/${tenant.id}/invitations`, 201, {
      email: address(secret.inviteeLocalPart),
      role: "member",
    }),
  );
  const invited = await tokenMailed(tenant.id, invitationMail.name);
  // The same fresh sign-in starts an authenticator-app enrolment (totp_factors.secret, handed out once) and
  // configures single sign-on with a client secret (sso_configurations.client_secret).
  const totp = await json<{ secret: string }>(await call("POST", "/api/v1/me/totp", 201));
  const sso = await json<{ id: string }>(
    await call("POST", `/api/v1/tenants/${tenant.id}/sso/configurations`, 201, {
      name: "At Rest IdP",
      issuer: "https://idp.example.com",
      clientId: "charter-at-rest",
      clientSecret: secret.ssoClientSecret,
      emailClaim: "email",
      nameClaim: "name",
      mfaAmrValues: [],
      enabled: false,
    }),
  );
  // An invitation token is `<tenant id>.<secret>`: the tenant id is no secret, and is written in plain text.
  const invitationSecret = invited.token.slice(invited.token.indexOf(".") + 1);
  return {
    userId,
    tenantId: tenant.id,
    invitationId: invitation.id,
    ssoConfigurationId: sso.id,
    mails: [verification.ref, change.ref, invited.ref],
    issued: {
      sessionToken: session,
      verificationToken: verification.token,
      emailChangeToken: change.token,
      invitationToken: invitationSecret,
      totpSecret: totp.secret,
    },
  };
}

async function main(planPath: string, resultPath: string): Promise<void> {
  const plan = JSON.parse(readFileSync(planPath, "utf8")) as AtRestPlan;
  const { secret, control } = plan;
  const defineJobs = (jobs: Jobs) => {
    jobs.define(
      FAILING_JOB,
      async () => {
        throw new Error(`could not process the record of ${secret.jobError}`);
      },
      { retryLimit: 0 },
    );
    jobs.define(CONTROL_JOB, async () => {});
  };
  const config = loadConfig(process.env);
  const server = await startServer(config, { defineJobs });
  try {
    const { db, services } = server;
    const { keyRing, audit, mailer, files, jobs, blobs } = services;
    const clock = systemClock;
    const tenant = await createTenant(
      db,
      clock,
      { slug: `at-rest-${uuidv7().slice(-12)}`, name: control.tenantName },
      keyRing,
      audit,
    );
    const tenantId = tenant.id;
    const subjectId = uuidv7();
    const personId = uuidv7();
    const text = (marker: string) => Buffer.from(`a note about ${marker}, kept in the file store\n`);
    const note = { kind: "attachment", mediaType: "text/plain" } as const;

    const owners: Record<"subject" | "tenant" | "platform" | "person", FileOwner> = {
      subject: { scope: "subject", tenantId, subjectId },
      tenant: { scope: "tenant", tenantId },
      platform: { scope: "platform" },
      person: { scope: "person", personId },
    };
    const tenantWrites = await db.withTenant({ tenantId }, async (tx) => {
      const mail = await mailer.send(tx, {
        tenantId,
        subjectId,
        purpose: "transactional",
        channel: "email",
        to: address(secret.tenantMailLocalPart),
        template: "sign-in-code",
        data: { code: secret.tenantMailCode, minutes: 10 },
      });
      const subjectFile = await files.put(
        tx,
        owners.subject,
        { ...note, name: secret.subjectFileName },
        text(secret.subjectFileContent),
      );
      const tenantFile = await files.put(
        tx,
        owners.tenant,
        { ...note, name: secret.tenantFileName },
        text(secret.tenantFileContent),
      );
      const event = await audit.record(tx, {
        tenantId,
        stream: "changes",
        actor: { kind: "system", id: null },
        action: "record.updated",
        target: { type: "contact", id: subjectId },
        subjects: [subjectId],
        details: { fields: ["note"] },
        personal: { [subjectId]: { note: secret.tenantAuditDetail } },
      });
      return { mail, subjectFile, tenantFile, event };
    });
    const platformWrites = await db.withPlatform(async (tx) => {
      const mail = await mailer.send(tx, {
        personId,
        purpose: "security",
        channel: "email",
        to: address(secret.platformMailLocalPart),
        template: "sign-in-code",
        data: { code: secret.platformMailCode, minutes: 10 },
      });
      const platformFile = await files.put(
        tx,
        owners.platform,
        { ...note, name: secret.platformFileName },
        text(secret.platformFileContent),
      );
      const personFile = await files.put(
        tx,
        owners.person,
        { ...note, name: secret.personFileName },
        text(secret.personFileContent),
      );
      await jobs.send(tx, FAILING_JOB, { personId });
      await jobs.send(tx, CONTROL_JOB, {}, { singletonKey: control.singletonKey });
      const event = await audit.record(tx, {
        tenantId: null,
        stream: "security",
        actor: { kind: "user", id: personId },
        action: "auth.profile-changed",
        target: { type: "user", id: personId },
        subjects: [personId],
        personal: { [personId]: { note: secret.platformAuditDetail } },
      });
      return { mail, platformFile, personFile, event };
    });
    if (tenantWrites.mail.status !== "queued" || platformWrites.mail.status !== "queued") {
      throw new Error("with CHARTER_SMTP_URL set, both messages should be queued for delivery");
    }
    const accounts = await writeAccounts(server, config.publicUrl, secret);
    await blobs.put(newBlobKey(), Buffer.from(`plain text ${control.blob}\n`));
    // Whatever the answer, the request log names the path.
    await (await fetch(`${server.url}/${control.requestPath}`)).arrayBuffer();

    // Every job this run enqueued reaches a final state: the deliveries (all accepted but one, refused for
    // good by the SMTP server), the failing job and the control job.
    const kinds = [PLATFORM_JOBS.deliverMail, FAILING_JOB, CONTROL_JOB];
    const jobStates = await eventually(async () => {
      const rows = (await db.queueSql("SELECT name, state FROM pgboss.job WHERE name = ANY($1::text[])", [kinds])) as {
        name: string;
        state: string;
      }[];
      const final = rows.length === JOB_COUNT && rows.every((r) => r.state === "completed" || r.state === "failed");
      if (!final) return undefined;
      return Object.fromEntries(
        [...Map.groupBy(rows, (r) => r.name)].map(([name, jobs]) => [name, jobs.map((j) => j.state).sort()]),
      );
    }, 30_000);

    const readBack: Record<string, string[]> = {};
    const record = (column: string, value: string) => {
      readBack[column] = [...(readBack[column] ?? []), value];
    };
    const recordMail = async (tx: Tx, ref: MessageRef) => {
      for (const [column, value] of Object.entries(await openMail(tx, keyRing, ref))) {
        record(`${mailTable(ref)}.${column}`, value);
      }
    };
    const recordEmail = async (tx: Tx, envelope: string, binding: Binding) => {
      record(`${binding.table}.${binding.column}`, await keyRing.decrypt(tx, envelope, binding));
    };
    const readFile = async (tx: Tx, owner: FileOwner, id: string, table: "tenant_files" | "platform_files") => {
      const { file, content } = await files.read(tx, { owner, id });
      if (file.name !== null) record(`${table}.name`, file.name);
      // The content key protects the content: what it opens is what the column stands for.
      record(`${table}.content_key`, content.toString("utf8"));
    };
    await db.withTenant({ tenantId }, async (tx) => {
      await recordMail(tx, tenantWrites.mail.ref);
      await readFile(tx, owners.subject, tenantWrites.subjectFile.id, "tenant_files");
      await readFile(tx, owners.tenant, tenantWrites.tenantFile.id, "tenant_files");
      const personal = await audit.openPersonal(tx, tenantWrites.event, subjectId);
      record("audit_events.personal", String(personal.note));
    });
    await db.withPlatform(async (tx) => {
      await recordMail(tx, platformWrites.mail.ref);
      await readFile(tx, owners.platform, platformWrites.platformFile.id, "platform_files");
      await readFile(tx, owners.person, platformWrites.personFile.id, "platform_files");
      const personal = await audit.openPersonal(tx, platformWrites.event, personId);
      record("platform_audit_events.personal", String(personal.note));
      const { userId } = accounts;
      const user = await tx.selectFrom("users").select("email").where("id", "=", userId).executeTakeFirstOrThrow();
      await recordEmail(tx, user.email, { tenantId: null, table: "users", column: "email", rowId: userId });
      const tokens = await tx
        .selectFrom("account_tokens")
        .select(["id", "email"])
        .where("user_id", "=", userId)
        .where("email", "is not", null)
        .execute();
      for (const token of tokens) {
        const binding: Binding = { tenantId: null, table: "account_tokens", column: "email", rowId: token.id };
        await recordEmail(tx, token.email as string, binding);
      }
    });
    for (const ref of accounts.mails) {
      await (ref.tenantId === null
        ? db.withPlatform((tx) => recordMail(tx, ref))
        : db.withTenant({ tenantId: ref.tenantId }, (tx) => recordMail(tx, ref)));
    }
    await db.withTenant({ tenantId: accounts.tenantId }, async (tx) => {
      const { tenantId: invitingTenant, invitationId } = accounts;
      const invitation = await tx
        .selectFrom("invitations")
        .select("email")
        .where("tenant_id", "=", invitingTenant)
        .where("id", "=", invitationId)
        .executeTakeFirstOrThrow();
      const binding: Binding = { tenantId: invitingTenant, table: "invitations", column: "email", rowId: invitationId };
      await recordEmail(tx, invitation.email, binding);
    });
    await db.withTenant({ tenantId: accounts.tenantId }, async (tx) => {
      const { tenantId: ssoTenant, ssoConfigurationId: rowId } = accounts;
      const configuration = await tx
        .selectFrom("sso_configurations")
        .select("client_secret")
        .where("tenant_id", "=", ssoTenant)
        .where("id", "=", rowId)
        .executeTakeFirstOrThrow();
      const binding: Binding = { tenantId: ssoTenant, table: "sso_configurations", column: "client_secret", rowId };
      await recordEmail(tx, configuration.client_secret, binding);
    });
    await db.withPlatform(async (tx) => {
      const { userId } = accounts;
      const factor = await tx
        .selectFrom("totp_factors")
        .select("secret")
        .where("user_id", "=", userId)
        .executeTakeFirstOrThrow();
      await recordEmail(tx, factor.secret, { tenantId: null, table: "totp_factors", column: "secret", rowId: userId });
      // An SSO sign-in in flight, as the start of one seals it (the provider it would go to is not reachable here).
      const id = uuidv7();
      const binding: Binding = { tenantId: null, table: "sso_authorization_requests", column: "checks", rowId: id };
      const now = new Date();
      await tx
        .insertInto("sso_authorization_requests")
        .values({
          id,
          for_tenant: accounts.tenantId,
          configuration_id: accounts.ssoConfigurationId,
          state_hash: randomBytes(32),
          binding_hash: randomBytes(32),
          checks: await keyRing.encrypt(
            tx,
            { scope: "platform" },
            JSON.stringify({ codeVerifier: secret.ssoChecks, nonce: secret.ssoChecks }),
            binding,
          ),
          return_to: "/",
          created_at: now,
          expires_at: new Date(now.getTime() + 10 * 60_000),
        })
        .execute();
      const stored = await tx
        .selectFrom("sso_authorization_requests")
        .select("checks")
        .where("id", "=", id)
        .executeTakeFirstOrThrow();
      await recordEmail(tx, stored.checks, binding);
    });
    const result: AtRestResult = { readBack, jobStates, issued: accounts.issued };
    writeFileSync(resultPath, JSON.stringify(result));
  } finally {
    await server.shutdown();
  }
}

const [planPath, resultPath] = process.argv.slice(2);
if (!planPath || !resultPath) {
  process.stderr.write("usage: node test/support/at-rest-server.ts <plan.json> <result.json>\n");
  process.exit(2);
}
await main(planPath, resultPath);
