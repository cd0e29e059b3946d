import { existsSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { escapeHtml } from "./html.ts";

const WEB_INDEX = fileURLToPath(new URL("../../../dist/web/index.html", import.meta.url));

let cachedIndex: string | null | undefined;

function builtIndex(): string | null {
  if (cachedIndex === undefined) cachedIndex = existsSync(WEB_INDEX) ? readFileSync(WEB_INDEX, "utf8") : null;
  return cachedIndex;
}

/**
 * The web app's page with this request's CSP nonces on its script and style tags. Until the web app is built
 * (dist/web), a plain page says what runs here and where the API reference is.
 */
export function renderWebApp(nonce: { script: string; style: string }): string {
  const index = builtIndex();
  if (index) {
    return index
      .replaceAll("<script", `<script nonce="${escapeHtml(nonce.script)}"`)
      .replaceAll("<style", `<style nonce="${escapeHtml(nonce.style)}"`)
      .replaceAll('<link rel="stylesheet"', `<link rel="stylesheet" nonce="${escapeHtml(nonce.style)}"`);
  }
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>Charter</title><style nonce="${escapeHtml(nonce.style)}">body{font:16px/1.5 system-ui,sans-serif;max-width:640px;margin:64px auto;padding:0 24px;color:#1d2330}</style></head>
<body><h1>Charter</h1><p>The Charter server is running. The web app is not part of this build yet.</p>
<ul><li><a href="/docs">API reference</a></li><li><a href="/openapi.json">OpenAPI 3.1 description</a></li><li><a href="/health">Health</a> · <a href="/ready">Readiness</a></li></ul></body></html>`;
}
