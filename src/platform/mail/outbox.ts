import type { CommandResult } from "../cli/control-socket.ts";
import type { Mailer, OutboxEntry } from "./service.ts";

/**
 * The outbox as `charter mail outbox` prints it: one block per message, newest first, with the address and
 * the rendered message decrypted. This is how a developer on the embedded database reads mail, so it shows
 * what a mail client would; it is printed to the terminal, never logged.
 */
export function formatOutbox(entries: readonly OutboxEntry[]): string {
  if (entries.length === 0) return "the outbox is empty";
  return entries
    .map((entry) => {
      const status = entry.statusReason ? `${entry.status} (${entry.statusReason})` : entry.status;
      const owner = entry.tenantId === null ? "platform" : `tenant ${entry.tenantId}`;
      const lines = [
        `${entry.createdAt.toISOString()}  ${status}  ${entry.purpose}  ${entry.template}  ${owner}  id ${entry.id}`,
      ];
      if (entry.status !== "suppressed") {
        lines.push(`  To: ${entry.to ?? "[erased]"}`);
        if (entry.rendered) {
          lines.push(`  Subject: ${entry.rendered.subject}`, "");
          lines.push(
            ...entry.rendered.text
              .trimEnd()
              .split("\n")
              .map((line) => `    ${line}`.trimEnd()),
          );
        } else if (entry.to !== undefined) {
          lines.push(`  (template "${entry.template}" cannot render this message in this build)`);
        }
      }
      return lines.join("\n");
    })
    .join("\n\n");
}

/** `charter mail outbox`, in the CLI or inside the server through its control socket. */
export async function mailOutboxCommand(mailer: Pick<Mailer, "outbox">): Promise<CommandResult> {
  return { exitCode: 0, output: formatOutbox(await mailer.outbox()) };
}
