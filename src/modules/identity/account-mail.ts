import { z } from "zod";
import { defineTemplate, html, type MailTemplate } from "../../platform/mail/index.ts";

/**
 * The mail of accounts. Each message holds the recipient's display name and one link, nothing else: the
 * address is the envelope's, and a token only ever travels in the link's fragment (#token=…), which a mail
 * scanner fetching the URL never sends, so it cannot use the token up. The page behind the link POSTs it.
 */

const data = z.strictObject({
  displayName: z.string().min(1).max(100),
  link: z.url({ protocol: /^https?$/ }),
});

/** The same, with a time (ISO 8601 in UTC, written as the reader sees it) that `{at}` places. */
const dataWithTime = data.extend({ at: z.iso.datetime() });

type Data = z.output<typeof data> & { at?: string };

/** "2026-01-04 09:30 UTC": a time anyone can read, whatever their locale. */
const readableUtc = (iso: string) => `${iso.slice(0, 10)} ${iso.slice(11, 16)} UTC`;

/**
 * Renders a message from its paragraphs; `{link}` in a paragraph places the link, `{at}` the time of
 * templates whose data has one.
 */
function message(
  name: string,
  subject: string,
  paragraphs: readonly string[],
  schema: typeof data | typeof dataWithTime = data,
): MailTemplate {
  return defineTemplate({
    name,
    data: schema,
    render: ({ displayName, link, at }: Data) => {
      const timed = paragraphs.map((p) => (at === undefined ? p : p.replace("{at}", readableUtc(at))));
      const text = [`Hello ${displayName},`, ...timed.map((p) => p.replace("{link}", link))].join("\n\n");
      const markup = [html`<p>Hello ${displayName},</p>`.markup];
      for (const paragraph of timed) {
        const [before = "", after] = paragraph.split("{link}");
        markup.push(
          after === undefined
            ? html`<p>${before}</p>`.markup
            : html`<p>${before}<a href="${link}">${link}</a>${after}</p>`.markup,
        );
      }
      return { subject, text: `${text}\n`, html: markup.join("") };
    },
  });
}

export const verifyEmail = message("verify-email", "Confirm your email address for Charter", [
  "Someone, hopefully you, signed up for Charter with this address. To confirm it, open this link and press the button on the page:",
  "{link}",
  "The link is valid for 24 hours and works once. If you did not sign up, ignore this message: the account stays unconfirmed and is removed when the owner of this address confirms another one.",
]);

export const signupExistingAccount = message("signup-existing-account", "Someone tried to sign up with your address", [
  "Someone tried to create a Charter account with this address, but you already have one, so nothing was created.",
  "If it was you, sign in instead; if you have forgotten your password, reset it from the sign-in page:",
  "{link}",
  "If it was not you, you need do nothing: your account is unchanged.",
]);

export const passwordReset = message("password-reset", "Reset your Charter password", [
  "Someone, hopefully you, asked to reset the password of your Charter account. To choose a new one, open this link:",
  "{link}",
  "The link is valid for 30 minutes and works once. Resetting your password signs you out everywhere. If you did not ask for this, ignore this message: your password is unchanged.",
]);

export const passwordResetDone = message("password-reset-done", "Your Charter password was reset", [
  "The password of your Charter account was just reset, and every session was signed out.",
  "If you did not do this, someone can read your mail: secure your mailbox first, then reset your password again here:",
  "{link}",
]);

export const passwordChanged = message("password-changed", "Your Charter password was changed", [
  "The password of your Charter account was just changed, and your other sessions were signed out.",
  "If you did not do this, reset your password at once here:",
  "{link}",
]);

export const emailChangeConfirm = message("email-change-confirm", "Confirm your new email address for Charter", [
  "You asked to use this address for your Charter account. Nothing changes until you confirm it: open this link and press the button on the page:",
  "{link}",
  "The link is valid for 24 hours and works once. If you did not ask for this, ignore this message.",
]);

export const emailChangeExistingAccount = message(
  "email-change-existing-account",
  "Someone tried to move a Charter account to your address",
  [
    "Someone asked to use this address for a Charter account, but it already belongs to your account, so nothing was changed.",
    "Your account is unchanged; you can sign in as usual here:",
    "{link}",
  ],
);

export const emailChangedRevert = message(
  "email-changed-revert",
  "The email address of your Charter account was changed",
  [
    "The email address of your Charter account was just changed, and this address is no longer used for it.",
    "If you did not do this, open this link to return your account to this address and sign out every session:",
    "{link}",
    "The link is valid for 7 days and works once. After that, reset your password from the sign-in page: whoever changed the address may know it.",
  ],
);

export const factorResetRequested = message(
  "factor-reset-requested",
  "A reset of your Charter sign-in factors was requested",
  [
    "The operator of this Charter was asked to reset the sign-in factors of your account (your password), as is done for someone who has lost them.",
    "The reset takes effect at {at}: your password then stops working, every session is signed out, and this address gets a link to choose a new password.",
    "If you asked for this, you need do nothing. If you did not, sign in before then and cancel it from your account page:",
    "{link}",
  ],
  dataWithTime,
);

export const factorsReset = message("factors-reset", "Your Charter sign-in factors were reset", [
  "As announced, the sign-in factors of your Charter account were reset: your old password no longer works and every session was signed out.",
  "To choose a new password, open this link:",
  "{link}",
  'The link is valid for 30 minutes and works once; after that, ask for a new one with "Forgot your password?" on the sign-in page.',
]);

/** The identity module's templates, registered with the mailer. */
export const identityTemplates: readonly MailTemplate[] = [
  verifyEmail,
  signupExistingAccount,
  passwordReset,
  passwordResetDone,
  passwordChanged,
  emailChangeConfirm,
  emailChangeExistingAccount,
  emailChangedRevert,
  factorResetRequested,
  factorsReset,
];
