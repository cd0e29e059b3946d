import { chmodSync, existsSync, unlinkSync } from "node:fs";
import { createConnection, createServer, type Server } from "node:net";
import type { Database } from "../db/index.ts";

/** The result of a maintenance command, whether it ran in this process or inside the server. */
export interface CommandResult {
  exitCode: number;
  output: string;
}

export type CommandHandler = (args: Record<string, unknown>) => Promise<CommandResult>;

/**
 * How main.ts runs a maintenance command: on the database, or, when a server holds the embedded database,
 * inside that server through this socket (as the handler registered under `name`).
 */
export type RunMaintenance = (
  name: string,
  args: Record<string, string>,
  command: (db: Database) => Promise<CommandResult>,
) => Promise<void>;

const MAX_REQUEST = 64 * 1024;

/**
 * Serves maintenance commands to the CLI on a Unix socket only the service's user can open (mode 0600, in a
 * 0700 directory), so `charter doctor` and `charter migrate` work while the server holds the embedded database.
 */
export async function serveControlSocket(path: string, handlers: Record<string, CommandHandler>): Promise<Server> {
  // A socket file left by a process that died is in the way; a live server would still hold the db lock.
  if (existsSync(path)) unlinkSync(path);
  const server = createServer((socket) => {
    let buffer = "";
    socket.setEncoding("utf8");
    socket.on("error", () => socket.destroy());
    socket.on("data", (chunk: string) => {
      buffer += chunk;
      if (buffer.length > MAX_REQUEST) return socket.destroy();
      const newline = buffer.indexOf("\n");
      if (newline < 0) return;
      socket.pause();
      void answer(buffer.slice(0, newline)).then((result) => socket.end(`${JSON.stringify(result)}\n`));
    });
  });
  async function answer(line: string): Promise<CommandResult> {
    let request: { command?: unknown; args?: unknown };
    try {
      request = JSON.parse(line);
    } catch {
      return { exitCode: 2, output: "malformed request" };
    }
    const handler = typeof request.command === "string" ? handlers[request.command] : undefined;
    if (!handler || !Object.hasOwn(handlers, request.command as string)) {
      return { exitCode: 2, output: `the server does not run "${String(request.command)}"` };
    }
    try {
      return await handler((request.args ?? {}) as Record<string, unknown>);
    } catch (error) {
      return { exitCode: 1, output: (error as Error).message };
    }
  }
  const previousMask = process.umask(0o177);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(path, () => resolve());
    });
  } finally {
    process.umask(previousMask);
  }
  chmodSync(path, 0o600);
  return server;
}

/** Asks the running server to run a command; rejects if no server listens on the socket. */
export function callControlSocket(path: string, command: string, args: Record<string, unknown> = {}) {
  return new Promise<CommandResult>((resolve, reject) => {
    const socket = createConnection(path);
    let buffer = "";
    socket.setEncoding("utf8");
    socket.on("connect", () => socket.write(`${JSON.stringify({ command, args })}\n`));
    socket.on("data", (chunk: string) => {
      buffer += chunk;
    });
    socket.on("error", reject);
    socket.on("end", () => {
      try {
        resolve(JSON.parse(buffer) as CommandResult);
      } catch {
        reject(new Error("the server's answer was malformed"));
      }
    });
  });
}
