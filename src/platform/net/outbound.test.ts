import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import http, { type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from "node:http";
import https from "node:https";
import net, { type AddressInfo } from "node:net";
import fc from "fast-check";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createTestCertificate, type TestCertificate } from "../../../test/support/certs.ts";
import { refusalForAddress } from "./address.ts";
import {
  createOutboundClient,
  OutboundFailed,
  type OutboundOptions,
  OutboundRefused,
  type OutboundRequest,
  type Resolver,
} from "./outbound.ts";

type Handler = (req: IncomingMessage, res: ServerResponse, body: Buffer) => void;

interface Seen {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

interface TestServer {
  host: string;
  port: number;
  origin: string;
  /** TCP connections accepted. */
  connections: number;
  requests: Seen[];
  close(): Promise<void>;
}

const servers: TestServer[] = [];

async function serve(handler: Handler, host = "127.0.0.1", port = 0, tls?: TestCertificate): Promise<TestServer> {
  const requests: Seen[] = [];
  const listener = (req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      requests.push({ method: req.method ?? "", url: req.url ?? "", headers: req.headers, body });
      handler(req, res, body);
    });
  };
  const server = tls
    ? https.createServer({ cert: readFileSync(tls.certPath), key: readFileSync(tls.keyPath) }, listener)
    : http.createServer(listener);
  const sockets = new Set<net.Socket>();
  const state: TestServer = {
    host,
    port: 0,
    origin: "",
    connections: 0,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
  server.on("connection", (socket: net.Socket) => {
    state.connections++;
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve());
  });
  state.port = (server.address() as AddressInfo).port;
  state.origin = `${tls ? "https" : "http"}://${host}:${state.port}`;
  servers.push(state);
  return state;
}

afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

const ok: Handler = (_req, res) => {
  res.setHeader("content-type", "text/plain");
  res.end("hello");
};

/** A resolver answering from a fixed table, counting its calls. */
function table(entries: Record<string, string[]>): Resolver & { calls: string[] } {
  const calls: string[] = [];
  const resolver = async (hostname: string) => {
    calls.push(hostname);
    const found = entries[hostname];
    if (!found) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: "ENOTFOUND" });
    return found.map((address) => ({ address }));
  };
  return Object.assign(resolver, { calls });
}

function client(options: OutboundOptions = {}) {
  return createOutboundClient({ allowHttp: true, ...options });
}

async function refusal(promise: Promise<unknown>): Promise<OutboundRefused> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(OutboundRefused);
  return error as OutboundRefused;
}

const get = (url: string, extra: Partial<OutboundRequest> = {}): OutboundRequest => ({
  url,
  purpose: "test",
  ...extra,
});

describe("addresses", () => {
  it("refuses a loopback server by default and reaches it when the address is allowed", async () => {
    const server = await serve(ok);
    const refused = await refusal(client().request(get(`${server.origin}/`)));
    expect(refused.reason).toBe("address");
    expect(refused.hostname).toBe("127.0.0.1");
    expect(server.connections).toBe(0);

    const allowed = await client({ allowAddresses: ["127.0.0.1"] }).request(get(`${server.origin}/path?q=1`));
    expect(allowed.status).toBe(200);
    expect(allowed.body.toString()).toBe("hello");
    expect(allowed.headers["content-type"]).toBe("text/plain");
    expect(allowed.url).toBe(`${server.origin}/path?q=1`);
    expect(server.requests[0]?.url).toBe("/path?q=1");
  });

  it("allows only the exact addresses listed", async () => {
    const server = await serve(ok);
    const refused = await refusal(client({ allowAddresses: ["127.0.0.2"] }).request(get(`${server.origin}/`)));
    expect(refused.reason).toBe("address");
    expect(() => createOutboundClient({ allowAddresses: ["localhost"] })).toThrow(/not an IP address/);
  });

  it("refuses a public-looking name that resolves to a private address, before connecting", async () => {
    const server = await serve(ok);
    for (const address of ["10.0.0.5", "192.168.1.1", "172.16.0.1", "127.0.0.1", "100.64.0.1", "::1"]) {
      const resolve = table({ "api.example.com": [address] });
      const refused = await refusal(client({ resolve }).request(get(`http://api.example.com:${server.port}/`)));
      expect(refused.reason).toBe("address");
      expect(refused.message).toContain("api.example.com");
      expect(resolve.calls).toEqual(["api.example.com"]);
    }
    expect(server.connections).toBe(0);
  });

  it("refuses when any one of the resolved addresses is private, whatever the order", async () => {
    for (const addresses of [
      ["93.184.215.14", "10.0.0.1"],
      ["10.0.0.1", "93.184.215.14"],
      ["2606:4700::6810:84e5", "fd00::1"],
    ]) {
      const resolve = table({ "mixed.example.com": addresses });
      expect((await refusal(client({ resolve }).request(get("http://mixed.example.com/")))).reason).toBe("address");
    }
  });

  it("refuses a name that resolves to nothing, and reports an unknown name as a failure", async () => {
    const empty = client({ resolve: async () => [] });
    expect((await refusal(empty.request(get("https://empty.example/")))).reason).toBe("address");
    const unknown = await client({ resolve: table({}) })
      .request(get("https://nowhere.example/"))
      .catch((e: unknown) => e);
    expect(unknown).toBeInstanceOf(OutboundFailed);
    expect((unknown as OutboundFailed).code).toBe("ENOTFOUND");
  });

  it.each([
    "http://[::1]:9/",
    "http://[::ffff:127.0.0.1]:9/",
    "http://[::ffff:7f00:1]:9/",
    "http://[64:ff9b::7f00:1]:9/",
    "http://[64:ff9b::a00:1]:9/",
    "http://[2002:7f00:1::1]:9/",
    "http://[fe80::1]:9/",
    "http://[fc00::1]:9/",
    "http://[fd00:ec2::254]:9/",
    "http://[ff02::1]:9/",
    "http://[::]:9/",
    "http://[::127.0.0.1]:9/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/",
    "http://0.0.0.0:9/",
    "http://255.255.255.255/",
    "http://0x7f000001:9/",
    "http://2130706433:9/",
    "http://127.1:9/",
    "http://017700000001:9/",
  ])("refuses the literal address in %s without resolving it", async (url) => {
    const resolve = table({});
    const refused = await refusal(client({ resolve }).request(get(url)));
    expect(refused.reason).toBe("address");
    expect(resolve.calls).toEqual([]);
  });

  it.each([
    "::1",
    "::ffff:127.0.0.1",
    "::ffff:7f00:1",
    "64:ff9b::7f00:1",
    "fe80::1",
    "fc00::1",
    "169.254.169.254",
    "::ffff:169.254.169.254",
  ])("refuses a name that resolves to %s", async (address) => {
    const resolve = table({ "metadata.example.com": [address] });
    expect((await refusal(client({ resolve }).request(get("http://metadata.example.com/")))).reason).toBe("address");
  });

  it("connects to the address it checked: a rebinding resolver cannot swap the target", async () => {
    const first = await serve((_q, res) => res.end("first"), "127.0.0.2");
    const second = await serve((_q, res) => res.end("second"), "127.0.0.3", first.port);
    let calls = 0;
    const resolve: Resolver = async () => [{ address: calls++ === 0 ? "127.0.0.2" : "127.0.0.3" }];
    const outbound = client({ resolve, allowAddresses: ["127.0.0.2", "127.0.0.3"] });

    const answer = await outbound.request(get(`http://rebind.example:${first.port}/`));
    expect(answer.body.toString()).toBe("first");
    expect(calls).toBe(1);
    expect(first.connections).toBe(1);
    expect(second.connections).toBe(0);
    // The Host header keeps the original name.
    expect(first.requests[0]?.headers.host).toBe(`rebind.example:${first.port}`);

    // The next call resolves again and goes where the resolver now points: the pin is per call, not stale.
    expect((await outbound.request(get(`http://rebind.example:${first.port}/`))).body.toString()).toBe("second");
    expect(second.connections).toBe(1);
  });

  it("a rebinding resolver that turns private between calls is refused on the call that sees it", async () => {
    const server = await serve(ok, "127.0.0.2");
    let calls = 0;
    const resolve: Resolver = async () => [{ address: calls++ === 0 ? "127.0.0.2" : "127.0.0.1" }];
    const outbound = client({ resolve, allowAddresses: ["127.0.0.2"] });
    expect((await outbound.request(get(`http://flip.example:${server.port}/`))).status).toBe(200);
    expect((await refusal(outbound.request(get(`http://flip.example:${server.port}/`)))).reason).toBe("address");
  });

  it("property: every address in a private range, plain or wrapped in IPv6, is refused before connecting", async () => {
    const server = await serve(ok);
    let current = "";
    const outbound = client({ resolve: async () => [{ address: current }] });
    await fc.assert(
      fc.asyncProperty(privateAddress(), async (address) => {
        expect(refusalForAddress(address)).toBeDefined();
        // Through the client: as a literal host, and as what a name resolves to.
        const literal = address.includes(":") ? `[${address}]` : address;
        expect((await refusal(outbound.request(get(`http://${literal}:${server.port}/`)))).reason).toBe("address");
        current = address;
        expect((await refusal(outbound.request(get(`http://target.example:${server.port}/`)))).reason).toBe("address");
      }),
      { numRuns: 300 },
    );
    expect(server.connections).toBe(0);
  });

  it("property: public addresses are accepted by the address check", () => {
    fc.assert(
      fc.property(publicIPv4(), (address) => {
        expect(refusalForAddress(address)).toBeUndefined();
        expect(refusalForAddress(`::ffff:${address}`)).toBeUndefined();
      }),
      { numRuns: 500 },
    );
  });
});

describe("URLs", () => {
  it("requires https unless http is allowed", async () => {
    const server = await serve(ok);
    const strict = createOutboundClient({ allowAddresses: ["127.0.0.1"] });
    expect((await refusal(strict.request(get(`${server.origin}/`)))).reason).toBe("scheme");
    expect(server.connections).toBe(0);
    for (const url of [
      "ftp://example.com/",
      "file:///etc/passwd",
      "gopher://example.com/",
      "data:,hi",
      "ws://x.example/",
    ]) {
      expect((await refusal(client().request(get(url)))).reason).toBe("scheme");
    }
  });

  it("refuses credentials in the URL and never repeats them", async () => {
    const server = await serve(ok);
    const outbound = client({ allowAddresses: ["127.0.0.1"] });
    for (const url of [
      `http://user:s3cret@127.0.0.1:${server.port}/`,
      `http://user@127.0.0.1:${server.port}/`,
      `http://:s3cret@127.0.0.1:${server.port}/`,
    ]) {
      const refused = await refusal(outbound.request(get(url)));
      expect(refused.reason).toBe("credentials");
      expect(refused.message).not.toContain("s3cret");
      expect(refused.message).not.toContain("user");
    }
    expect(server.connections).toBe(0);
  });

  it("refuses an invalid URL without echoing it", async () => {
    const refused = await refusal(client().request(get("http://exa mple.com/?token=s3cret")));
    expect(refused.reason).toBe("url");
    expect(refused.message).not.toContain("s3cret");
  });

  it("names the host but never the path or query string in errors", async () => {
    const resolve = table({ "hooks.example.com": ["10.1.2.3"] });
    const refused = await refusal(
      client({ resolve }).request(get("https://hooks.example.com/secret-path?token=s3cret", { purpose: "webhook" })),
    );
    expect(refused.message).toContain("hooks.example.com");
    expect(refused.message).toContain("webhook");
    expect(refused.message).not.toMatch(/s3cret|secret-path|10\.1\.2\.3/);
  });
});

describe("redirects", () => {
  it("follows up to the limit and reports the final URL", async () => {
    const server = await serve((req, res) => {
      const n = Number(req.url?.slice(1) || 0);
      if (n < 3) res.writeHead(302, { location: `/${n + 1}` }).end();
      else res.end(`done ${n}`);
    });
    const answer = await client({ allowAddresses: ["127.0.0.1"] }).request(get(`${server.origin}/0`));
    expect(answer.body.toString()).toBe("done 3");
    expect(answer.url).toBe(`${server.origin}/3`);
  });

  it("refuses past the limit (default 3, configurable)", async () => {
    const server = await serve((req, res) => res.writeHead(301, { location: `${req.url}x` }).end());
    const refused = await refusal(client({ allowAddresses: ["127.0.0.1"] }).request(get(`${server.origin}/`)));
    expect(refused.reason).toBe("redirects");
    expect(server.requests).toHaveLength(4);

    const none = await refusal(
      client({ allowAddresses: ["127.0.0.1"], maxRedirects: 0 }).request(get(`${server.origin}/`)),
    );
    expect(none.reason).toBe("redirects");
    expect(server.requests).toHaveLength(5);
  });

  it("re-checks the address at every hop: a redirect to a private or metadata address is refused", async () => {
    const inside = await serve(ok, "127.0.0.1");
    for (const location of [
      `http://127.0.0.1:${inside.port}/admin`,
      "http://169.254.169.254/latest/meta-data/iam/",
      `http://[::ffff:127.0.0.1]:${inside.port}/`,
      `http://internal.example:${inside.port}/`,
    ]) {
      const outside = await serve((_q, res) => res.writeHead(302, { location }).end(), "127.0.0.2");
      const resolve = table({ "internal.example": ["10.0.0.8"] });
      const refused = await refusal(
        client({ resolve, allowAddresses: ["127.0.0.2"] }).request(get(`${outside.origin}/`)),
      );
      expect(refused.reason).toBe("address");
      expect(outside.requests).toHaveLength(1);
    }
    expect(inside.connections).toBe(0);
  });

  it("re-checks the scheme at every hop", async () => {
    const server = await serve((_q, res) => res.writeHead(302, { location: "file:///etc/passwd" }).end());
    expect((await refusal(client({ allowAddresses: ["127.0.0.1"] }).request(get(server.origin)))).reason).toBe(
      "scheme",
    );
  });

  it("strips Authorization and Cookie on a cross-origin redirect and keeps them on the same origin", async () => {
    const target = await serve(ok, "127.0.0.3");
    const start = await serve((req, res) => {
      if (req.url === "/same") res.writeHead(302, { location: "/other" }).end();
      else if (req.url === "/other") res.writeHead(302, { location: `${target.origin}/landing` }).end();
      else res.end();
    }, "127.0.0.2");
    const answer = await client({ allowAddresses: ["127.0.0.2", "127.0.0.3"] }).request(
      get(`${start.origin}/same`, {
        headers: { Authorization: "Bearer s3cret", Cookie: "sid=1", "Proxy-Authorization": "Basic x", "X-Trace": "t1" },
      }),
    );
    expect(answer.url).toBe(`${target.origin}/landing`);
    expect(start.requests.map((r) => r.headers.authorization)).toEqual(["Bearer s3cret", "Bearer s3cret"]);
    expect(start.requests[1]?.headers.cookie).toBe("sid=1");
    const landed = target.requests[0]?.headers ?? {};
    expect(landed.authorization).toBeUndefined();
    expect(landed.cookie).toBeUndefined();
    expect(landed["proxy-authorization"]).toBeUndefined();
    expect(landed["x-trace"]).toBe("t1");
  });

  it("a different port is a different origin", async () => {
    const target = await serve(ok, "127.0.0.1");
    const start = await serve((_q, res) => res.writeHead(307, { location: `${target.origin}/` }).end(), "127.0.0.1");
    await client({ allowAddresses: ["127.0.0.1"] }).request(
      get(`${start.origin}/`, { headers: { authorization: "Bearer s3cret" } }),
    );
    expect(target.requests[0]?.headers.authorization).toBeUndefined();
  });

  it("turns a POST into a GET without body on 303, and does not follow other redirects of a POST", async () => {
    const server = await serve((req, res) => {
      if (req.url === "/see-other") res.writeHead(303, { location: "/result" }).end();
      else if (req.url === "/temporary") res.writeHead(307, { location: "/result" }).end();
      else res.end(`${req.method} ${req.url}`);
    });
    const outbound = client({ allowAddresses: ["127.0.0.1"] });
    const post = { method: "POST", body: '{"a":1}', headers: { "content-type": "application/json" } };
    const seeOther = await outbound.request(get(`${server.origin}/see-other`, post));
    expect(seeOther.body.toString()).toBe("GET /result");
    expect(server.requests[1]?.headers["content-type"]).toBeUndefined();
    expect(server.requests[1]?.body.length).toBe(0);

    const temporary = await outbound.request(get(`${server.origin}/temporary`, post));
    expect(temporary.status).toBe(307);
    expect(server.requests.map((r) => `${r.method} ${r.url}`)).toEqual([
      "POST /see-other",
      "GET /result",
      "POST /temporary",
    ]);
    expect(server.requests[2]?.body.toString()).toBe('{"a":1}');
  });
});

describe("caps", () => {
  it("refuses a body whose Content-Length announces more than the cap, before reading it", async () => {
    const server = await serve((_q, res) => {
      res.writeHead(200, { "content-length": 2000 });
      res.end(Buffer.alloc(2000, "a"));
    });
    const outbound = client({ allowAddresses: ["127.0.0.1"], maxBytes: 1000 });
    const refused = await refusal(outbound.request(get(server.origin)));
    expect(refused.reason).toBe("too-large");
    expect(refused.message).not.toContain("aaaa");
    expect((await outbound.request(get(server.origin, { maxBytes: 2000 }))).body.length).toBe(2000);

    // A server that announces 10 MiB and then stalls: refused on the announcement, not after a timeout.
    const stalling = await serve((_q, res) => {
      res.writeHead(200, { "content-length": 10 * 1024 * 1024 });
      res.write("aaaa");
    });
    const early = await refusal(outbound.request(get(stalling.origin, { timeoutMs: 5000 })));
    expect(early.reason).toBe("too-large");
  });

  it("does not hold a HEAD answer's Content-Length against the cap", async () => {
    const server = await serve((_q, res) => {
      res.writeHead(200, { "content-length": 10 * 1024 * 1024 });
      res.end();
    });
    const answer = await client({ allowAddresses: ["127.0.0.1"] }).request(get(server.origin, { method: "HEAD" }));
    expect(answer.status).toBe(200);
    expect(answer.headers["content-length"]).toBe(String(10 * 1024 * 1024));
    expect(answer.body.length).toBe(0);
  });

  it("refuses a chunked body that grows past the cap", async () => {
    const server = await serve((_q, res) => {
      res.writeHead(200, { "content-type": "text/plain" });
      for (let i = 0; i < 3; i++) res.write(Buffer.alloc(600, "b"));
      res.end();
    });
    const outbound = client({ allowAddresses: ["127.0.0.1"] });
    expect((await refusal(outbound.request(get(server.origin, { maxBytes: 1000 })))).reason).toBe("too-large");
    expect((await outbound.request(get(server.origin, { maxBytes: 1800 }))).body.length).toBe(1800);
  });

  it("caps at 1 MiB by default", async () => {
    const server = await serve((_q, res) => {
      res.write(Buffer.alloc(1024 * 1024));
      res.end(Buffer.alloc(1));
    });
    const refused = await refusal(client({ allowAddresses: ["127.0.0.1"] }).request(get(server.origin)));
    expect(refused.reason).toBe("too-large");
  });

  it("times out a server that never answers", async () => {
    const server = await serve(() => {});
    const started = Date.now();
    const refused = await refusal(
      client({ allowAddresses: ["127.0.0.1"], timeoutMs: 300 }).request(get(server.origin)),
    );
    expect(refused.reason).toBe("timeout");
    expect(Date.now() - started).toBeLessThan(3000);
  });

  it("times out a body that stalls after the headers", async () => {
    const server = await serve((_q, res) => {
      res.writeHead(200);
      res.write("partial");
    });
    const refused = await refusal(
      client({ allowAddresses: ["127.0.0.1"] }).request(get(server.origin, { timeoutMs: 300 })),
    );
    expect(refused.reason).toBe("timeout");
  });

  it("counts a slow resolver or hook against the total time", async () => {
    const resolve: Resolver = () => new Promise(() => {});
    expect((await refusal(client({ resolve, timeoutMs: 200 }).request(get("https://slow.example/")))).reason).toBe(
      "timeout",
    );
    const beforeSend = () => new Promise<void>(() => {});
    const server = await serve(ok);
    const gated = client({ allowAddresses: ["127.0.0.1"], beforeSend, timeoutMs: 200 });
    expect((await refusal(gated.request(get(server.origin)))).reason).toBe("timeout");
    expect(server.connections).toBe(0);
  });

  describe("connect timeout", () => {
    // A listener in another process that never accepts: once its queue is full, connections hang in SYN-SENT.
    let child: ChildProcess;
    let port = 0;
    const filler: net.Socket[] = [];
    beforeAll(async () => {
      child = spawn(
        process.execPath,
        [
          "-e",
          `const s = require("node:net").createServer();
           s.listen({ port: 0, host: "127.0.0.1", backlog: 1 }, () => {
             process.stdout.write(s.address().port + "\\n");
             Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 30000);
           });`,
        ],
        { stdio: ["ignore", "pipe", "inherit"] },
      );
      port = await new Promise<number>((resolve) => child.stdout?.once("data", (d) => resolve(Number(String(d)))));
      for (let i = 0; i < 8; i++) filler.push(net.connect(port, "127.0.0.1").on("error", () => {}));
      await new Promise((resolve) => setTimeout(resolve, 200));
    });
    afterAll(() => {
      for (const socket of filler) socket.destroy();
      child?.kill();
    });

    it("gives up on a connection that does not open", async () => {
      const started = Date.now();
      const outbound = client({ allowAddresses: ["127.0.0.1"], connectTimeoutMs: 250, timeoutMs: 5000 });
      const refused = await refusal(outbound.request(get(`http://127.0.0.1:${port}/`)));
      expect(refused.reason).toBe("timeout");
      expect(refused.message).toMatch(/no connection within 250 ms/);
      expect(Date.now() - started).toBeLessThan(2000);
    });
  });
});

describe("hooks", () => {
  it("asks the tenant allow-list at every hop and refuses when it says no", async () => {
    const target = await serve(ok, "127.0.0.3");
    const start = await serve((_q, res) =>
      res.writeHead(302, { location: `http://other.example:${target.port}/` }).end(),
    );
    const resolve = table({ "hooks.example": ["127.0.0.1"], "other.example": ["127.0.0.3"] });
    const asked: string[] = [];
    const outbound = client({
      resolve,
      allowAddresses: ["127.0.0.1", "127.0.0.3"],
      allowHost: (tenantId, hostname) => {
        asked.push(`${tenantId} ${hostname}`);
        return hostname === "hooks.example";
      },
    });
    const url = `http://hooks.example:${start.port}/`;
    const refused = await refusal(outbound.request(get(url, { tenantId: "t1" })));
    expect(refused.reason).toBe("not-allowed");
    expect(asked).toEqual(["t1 hooks.example", "t1 other.example"]);
    expect(target.connections).toBe(0);

    // Without a tenant the allow-list is not consulted.
    expect((await outbound.request(get(url))).status).toBe(200);
    expect(asked).toHaveLength(2);
  });

  it("refuses before resolving when the allow-list says no, and when it throws", async () => {
    const resolve = table({ "x.example": ["93.184.215.14"] });
    const no = client({ resolve, allowHost: async () => false });
    expect((await refusal(no.request(get("https://x.example/", { tenantId: "t1" })))).reason).toBe("not-allowed");
    const broken = client({
      resolve,
      allowHost: () => {
        throw new Error("db down");
      },
    });
    expect((await refusal(broken.request(get("https://x.example/", { tenantId: "t1" })))).reason).toBe("not-allowed");
    expect(resolve.calls).toEqual([]);
  });

  it("stops the call before any connection when beforeSend throws", async () => {
    const server = await serve(ok);
    const seen: unknown[] = [];
    const outbound = client({
      allowAddresses: ["127.0.0.1"],
      beforeSend: async (info) => {
        seen.push(info);
        throw new Error("subprocessor not approved");
      },
    });
    const refused = await refusal(outbound.request(get(`${server.origin}/x?y=1`, { tenantId: "t9", purpose: "oidc" })));
    expect(refused.reason).toBe("gate");
    expect(refused.cause).toBeInstanceOf(Error);
    expect(seen).toEqual([{ tenantId: "t9", purpose: "oidc", url: `${server.origin}/x?y=1` }]);
    expect(server.connections).toBe(0);
  });

  it("calls beforeSend for every hop, after the checks that would refuse it", async () => {
    const target = await serve(ok, "127.0.0.3");
    const start = await serve((_q, res) => res.writeHead(302, { location: `${target.origin}/b` }).end(), "127.0.0.2");
    const urls: string[] = [];
    await client({ allowAddresses: ["127.0.0.2", "127.0.0.3"], beforeSend: ({ url }) => void urls.push(url) }).request(
      get(`${start.origin}/a`),
    );
    expect(urls).toEqual([`${start.origin}/a`, `${target.origin}/b`]);

    urls.length = 0;
    await refusal(client({ beforeSend: ({ url }) => void urls.push(url) }).request(get(`${start.origin}/a`)));
    expect(urls).toEqual([]);
  });
});

describe("https", () => {
  let cert: TestCertificate;
  beforeAll(() => {
    cert = createTestCertificate();
  });
  afterAll(() => cert?.remove());

  it("connects to the pinned address but verifies the certificate against the original hostname", async () => {
    const server = await serve(ok, "127.0.0.1", 0, cert);
    const ca = readFileSync(cert.certPath);
    const resolve = table({ localhost: ["127.0.0.1"], "evil.example": ["127.0.0.1"] });
    const outbound = createOutboundClient({ resolve, allowAddresses: ["127.0.0.1"], ca });

    const answer = await outbound.request(get(`https://localhost:${server.port}/`));
    expect(answer.body.toString()).toBe("hello");
    expect(server.requests[0]?.headers.host).toBe(`localhost:${server.port}`);

    // Same socket address (127.0.0.1 is in the certificate), but the name is not: the TLS check must fail.
    const failed = await outbound.request(get(`https://evil.example:${server.port}/`)).catch((e: unknown) => e);
    expect(failed).toBeInstanceOf(OutboundFailed);
    expect((failed as OutboundFailed).code).toBe("ERR_TLS_CERT_ALTNAME_INVALID");
    expect(server.requests).toHaveLength(1);
  });

  it("refuses a redirect from https down to http", async () => {
    const plain = await serve(ok, "127.0.0.1");
    const secure = await serve(
      (_q, res) => res.writeHead(302, { location: `${plain.origin}/` }).end(),
      "127.0.0.1",
      0,
      cert,
    );
    const outbound = createOutboundClient({
      resolve: table({ localhost: ["127.0.0.1"] }),
      allowAddresses: ["127.0.0.1"],
      ca: readFileSync(cert.certPath),
    });
    expect((await refusal(outbound.request(get(`https://localhost:${secure.port}/`)))).reason).toBe("scheme");
    expect(plain.connections).toBe(0);
  });
});

// ---- generators ---------------------------------------------------------------------------------------------

const PRIVATE_V4: Array<[string, number]> = [
  ["0.0.0.0", 8],
  ["10.0.0.0", 8],
  ["100.64.0.0", 10],
  ["127.0.0.0", 8],
  ["169.254.0.0", 16],
  ["172.16.0.0", 12],
  ["192.0.0.0", 24],
  ["192.0.2.0", 24],
  ["192.168.0.0", 16],
  ["198.18.0.0", 15],
  ["198.51.100.0", 24],
  ["203.0.113.0", 24],
  ["224.0.0.0", 4],
  ["240.0.0.0", 4],
];

const toInt = (dotted: string) => dotted.split(".").reduce((acc, part) => acc * 256 + Number(part), 0);
const dotted = (n: number) => [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join(".");
const hex4 = (n: number) => `${(n >>> 16).toString(16)}:${(n & 0xffff).toString(16)}`;

function privateIPv4Int() {
  return fc
    .constantFrom(...PRIVATE_V4)
    .chain(([base, bits]) => fc.integer({ min: 0, max: 2 ** (32 - bits) - 1 }).map((offset) => toInt(base) + offset));
}

/** IPv6 with a fixed prefix of `bits` bits and random rest. */
function ipv6In(prefix: number[], bits: number) {
  return fc.array(fc.integer({ min: 0, max: 0xffff }), { minLength: 8, maxLength: 8 }).map((groups) => {
    const out = groups.map((g, i) => {
      const fixed = Math.min(16, Math.max(0, bits - i * 16));
      const mask = fixed === 0 ? 0 : (0xffff << (16 - fixed)) & 0xffff;
      return ((prefix[i] ?? 0) & mask) | (g & ~mask & 0xffff);
    });
    return out.map((g) => g.toString(16)).join(":");
  });
}

function privateAddress() {
  return fc.oneof(
    privateIPv4Int().map(dotted),
    privateIPv4Int().map((n) => `::ffff:${dotted(n)}`),
    privateIPv4Int().map((n) => `::ffff:${hex4(n)}`),
    privateIPv4Int().map((n) => `64:ff9b::${hex4(n)}`),
    privateIPv4Int().map((n) => `2002:${hex4(n)}::1`),
    ipv6In([0xfc00], 7),
    ipv6In([0xfe80], 10),
    ipv6In([0xfec0], 10),
    ipv6In([0xff00], 8),
    ipv6In([0x2001, 0x0db8], 32),
    ipv6In([0x2001, 0], 32),
    ipv6In([0, 0, 0, 0, 0, 0], 96),
    ipv6In([0x64, 0xff9b, 1], 48),
  );
}

function publicIPv4() {
  const special = new Set([0, 10, 100, 127, 168, 169, 172, 192, 198, 203]);
  return fc
    .tuple(fc.integer({ min: 1, max: 223 }), fc.integer({ min: 0, max: 0xffffff }))
    .filter(([first]) => !special.has(first))
    .map(([first, rest]) => dotted(first * 2 ** 24 + rest));
}
