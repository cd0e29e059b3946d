import { escapeHtml } from "./html.ts";

interface Operation {
  operationId?: string;
  summary?: string;
  tags?: string[];
  parameters?: { name: string; in: string; required?: boolean; schema?: unknown }[];
  requestBody?: { content?: Record<string, { schema?: unknown }> };
  responses?: Record<string, { description?: string; content?: Record<string, { schema?: unknown }> }>;
  "x-charter-permission"?: string;
  "x-charter-feature"?: string;
}

const METHODS = ["get", "post", "put", "patch", "delete"] as const;

const STYLE = `
body{font:15px/1.5 system-ui,sans-serif;margin:0;color:#1d2330;background:#f7f8fa}
header{background:#1d2330;color:#fff;padding:16px 32px}header h1{margin:0;font-size:20px}
header a{color:#9ec5ff}main{max-width:1000px;margin:0 auto;padding:24px 32px}
section.op{background:#fff;border:1px solid #dde1e8;border-radius:8px;margin:0 0 16px;padding:12px 16px}
.m{display:inline-block;min-width:60px;font-weight:700;text-transform:uppercase}
.get{color:#0a7d3b}.post{color:#1158c7}.put,.patch{color:#9a5b00}.delete{color:#b3261e}
code{font:13px ui-monospace,monospace}.perm{font-size:13px;color:#555}
pre{background:#f1f3f6;padding:8px;border-radius:6px;overflow:auto;font-size:12px;max-height:320px}
h2{margin-top:32px}details summary{cursor:pointer}`;

function schemaBlock(label: string, schema: unknown): string {
  return `<details><summary>${escapeHtml(label)}</summary><pre>${escapeHtml(JSON.stringify(schema, null, 2))}</pre></details>`;
}

function renderOperation(method: string, path: string, op: Operation): string {
  const params = (op.parameters ?? [])
    .map((p) => `<li><code>${escapeHtml(p.name)}</code> (${escapeHtml(p.in)}${p.required ? ", required" : ""})</li>`)
    .join("");
  const body = Object.entries(op.requestBody?.content ?? {})
    .map(([type, c]) => schemaBlock(`Request body: ${type}`, c.schema))
    .join("");
  const responses = Object.entries(op.responses ?? {})
    .map(
      ([status, r]) =>
        Object.entries(r.content ?? {})
          .map(([type, c]) => schemaBlock(`Response ${status}: ${type}`, c.schema))
          .join("") || `<p>Response ${escapeHtml(status)}</p>`,
    )
    .join("");
  return `<section class="op" id="${escapeHtml(op.operationId ?? `${method}-${path}`)}">
<div><span class="m ${method}">${method}</span> <code>${escapeHtml(path)}</code> — ${escapeHtml(op.summary ?? "")}</div>
<div class="perm">operationId <code>${escapeHtml(op.operationId ?? "")}</code> · permission <code>${escapeHtml(
    op["x-charter-permission"] ?? "",
  )}</code>${op["x-charter-feature"] ? ` · feature <code>${escapeHtml(op["x-charter-feature"])}</code>` : ""}</div>
${params ? `<ul>${params}</ul>` : ""}${body}${responses}</section>`;
}

/**
 * The API reference page, rendered on the server from the OpenAPI document: no script at all, and its one
 * style block carries the request's CSP nonce, so it works under the strict content security policy.
 */
export function renderApiReference(document: unknown, styleNonce: string): string {
  const doc = document as {
    info?: { title?: string; version?: string };
    paths?: Record<string, Record<string, Operation>>;
  };
  const byTag = new Map<string, string[]>();
  for (const [path, item] of Object.entries(doc.paths ?? {})) {
    for (const method of METHODS) {
      const op = item[method];
      if (!op) continue;
      const tag = op.tags?.[0] ?? "other";
      byTag.set(tag, [...(byTag.get(tag) ?? []), renderOperation(method, path, op)]);
    }
  }
  const sections = [...byTag.entries()]
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([tag, ops]) => `<h2>${escapeHtml(tag)}</h2>${ops.join("\n")}`)
    .join("\n");
  const title = `${doc.info?.title ?? "API"} ${doc.info?.version ?? ""}`.trim();
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>${escapeHtml(title)} — reference</title><style nonce="${escapeHtml(styleNonce)}">${STYLE}</style></head>
<body><header><h1>${escapeHtml(title)}</h1><p>Machine-readable: <a href="/openapi.json">/openapi.json</a> (OpenAPI 3.1). Errors are RFC 9457 problem documents.</p></header>
<main>${sections}</main></body></html>`;
}
