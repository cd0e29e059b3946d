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

type Data = z.output<typeof data>;

/** Renders a message from its paragraphs; `{link}` in a paragraph places the link. */
function message(name: string, subject: string, paragraphs: readonly string[]): MailTemplate {
  return defineTemplate({
    name,
    data,
    render: ({ displayName, link }: Data) => {
      const text = [`Hello ${displayName},`, ...paragraphs.map((p) => p.replace("{link}", link))].join("\n\n");
      const markup = [html`<p>Hello ${displayName},</p>`.markup];
      for (const paragraph of paragraphs) {
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
];
