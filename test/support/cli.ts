import { type ChildProcess, spawn } from "node:child_process";
import { createServer } from "node:net";
import { resolve } from "node:path";

/** The repository root, where `src/main.ts` is. */
export const REPO_ROOT = resolve(import.meta.dirname, "../..");

/**
 * An environment for the CLI with nothing inherited but what a shell needs, so a variable set on the
 * developer's machine (DATABASE_URL, PORT, …) never leaks into a test.
 */
export function cliEnv(vars: Record<string, string>): NodeJS.ProcessEnv {
  const { PATH, HOME, TMPDIR } = process.env;
  return { ...(PATH ? { PATH } : {}), ...(HOME ? { HOME } : {}), ...(TMPDIR ? { TMPDIR } : {}), ...vars };
}

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** A running `charter` process whose output is collected as it arrives. */
export interface CharterProcess {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** Resolves when the process has exited (at once if it already has). */
  exited: Promise<CliResult>;
  /** Sends `signal` unless the process has exited; never throws. */
  kill(signal?: NodeJS.Signals): void;
}

/**
 * Spawns `node src/main.ts …` with the Node that runs the tests (the pinned Node 24: the same binary `npx node`
 * resolves to, without npm's start-up time and its own warnings on stderr).
 */
export function spawnCharter(args: string[], env: NodeJS.ProcessEnv): CharterProcess {
  const child = spawn(process.execPath, ["src/main.ts", ...args], { cwd: REPO_ROOT, env, stdio: "pipe" });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
    stdout += chunk;
  });
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => {
    stderr += chunk;
  });
  const exited = new Promise<CliResult>((done, fail) => {
    child.once("error", fail);
    child.once("close", (code, signal) => done({ code, signal, stdout, stderr }));
  });
  return {
    child,
    stdout: () => stdout,
    stderr: () => stderr,
    exited,
    kill(signal = "SIGKILL") {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
  };
}

/** Runs a CLI command to completion; kills it if it outlives `timeoutMs`. */
export async function runCharter(args: string[], env: NodeJS.ProcessEnv, timeoutMs = 60_000): Promise<CliResult> {
  const charter = spawnCharter(args, env);
  const timer = setTimeout(() => charter.kill(), timeoutMs);
  try {
    return await charter.exited;
  } finally {
    clearTimeout(timer);
  }
}

/** A TCP port that was free a moment ago on 127.0.0.1. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
  const address = server.address();
  await new Promise<void>((done) => server.close(() => done()));
  if (!address || typeof address === "string") throw new Error("no port");
  return address.port;
}

/**
 * Polls `url` until it answers 200; returns the milliseconds it took. Fails early if `process` exits,
 * with its output in the message.
 */
export async function waitUntilServing(url: string, charter: CharterProcess, timeoutMs: number): Promise<number> {
  const started = performance.now();
  let exited = false;
  void charter.exited.then(() => {
    exited = true;
  });
  while (performance.now() - started < timeoutMs) {
    if (exited) throw new Error(`charter exited before serving:\n${charter.stdout()}\n${charter.stderr()}`);
    try {
      const response = await fetch(url, { signal: AbortSignal.timeout(2_000) });
      if (response.status === 200) return performance.now() - started;
    } catch {
      // not listening yet
    }
    await new Promise((done) => setTimeout(done, 100));
  }
  throw new Error(`${url} did not answer within ${timeoutMs} ms:\n${charter.stdout()}\n${charter.stderr()}`);
}

/** Matches a JavaScript stack frame line such as `    at run (file:///…/x.ts:12:5)`. */
export const STACK_FRAME = /^\s+at .+:\d+:\d+\)?$/m;
