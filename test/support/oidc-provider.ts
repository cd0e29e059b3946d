import { generateKeyPairSync, randomBytes, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import https from "node:https";
import type { AddressInfo } from "node:net";
import Provider, { type Adapter, type AdapterPayload, type OidcContext } from "oidc-provider";
import type { ProviderLogin } from "../../src/modules/identity/sso-testing.ts";
import { createOutboundClient, type OutboundClient } from "../../src/platform/net/index.ts";
import { createTestCertificate } from "./certs.ts";

/**
 * A real OpenID provider (oidc-provider) for end-to-end SSO tests, on https://localhost:<port> with a throwaway
 * certificate. Tests register clients, set the people it knows, and drive its authorization endpoint as a browser
 * would: `authorize` follows its redirects with a cookie jar of its own, logs the chosen person in through the
 * provider's interaction API (no login form), and returns where the provider sends the browser back (the
 * client's redirect URI with code, state and iss).
 */

export interface ProviderAccount {
  sub: string;
  /** Claims the provider releases for the account (email, email_verified, name…). */
  claims: Record<string, unknown>;
}

export type { ProviderLogin };

export interface TestProvider {
  issuer: string;
  /** The provider's (self-signed) certificate. */
  certificate: Buffer;
  addClient(client: { clientId: string; clientSecret: string; redirectUri: string }): void;
  setAccount(account: ProviderAccount): void;
  /**
   * Sends a browser to `url` (the provider's authorization endpoint with its query), logs `login` in, and answers
   * the URL the provider redirects the browser to once done (or the error redirect).
   */
  authorize(url: string | URL, login: ProviderLogin): Promise<URL>;
  close(): Promise<void>;
}

/** A memory adapter: clients come from `clients`, everything else the provider keeps lives in a map. */
function memoryAdapters(clients: Map<string, AdapterPayload>) {
  const store = new Map<string, AdapterPayload>();
  return (model: string): Adapter => {
    const key = (id: string) => `${model}:${id}`;
    return {
      async upsert(id, payload) {
        store.set(key(id), payload);
      },
      async find(id) {
        return model === "Client" ? clients.get(id) : store.get(key(id));
      },
      async findByUid(uid) {
        return [...store.entries()].find(([k, v]) => k.startsWith(`${model}:`) && v.uid === uid)?.[1];
      },
      async findByUserCode(userCode) {
        return [...store.entries()].find(([k, v]) => k.startsWith(`${model}:`) && v.userCode === userCode)?.[1];
      },
      async consume(id) {
        const payload = store.get(key(id));
        if (payload) payload.consumed = Math.floor(Date.now() / 1000);
      },
      async destroy(id) {
        store.delete(key(id));
      },
      async revokeByGrantId(grantId) {
        for (const [k, v] of store) if (v.grantId === grantId) store.delete(k);
      },
    };
  };
}

/** The first party's grant, made without a consent screen: the person already chose this client. */
async function loadExistingGrant(ctx: OidcContext) {
  const { provider, client, session, result } = ctx.oidc;
  if (!client || !session?.accountId) return undefined;
  const grantId = result?.consent?.grantId ?? session.grantIdFor(client.clientId);
  if (grantId) return provider.Grant.find(grantId);
  const grant = new provider.Grant({ clientId: client.clientId, accountId: session.accountId });
  grant.addOIDCScope("openid email profile");
  await grant.save();
  return grant;
}

/**
 * The outbound client of a Charter that may call these providers: it trusts their certificates and, as the
 * production client never does, lets their loopback address through (localhost resolves to 127.0.0.1 only).
 */
export function outboundFor(providers: readonly TestProvider[]): OutboundClient {
  return createOutboundClient({
    allowAddresses: ["127.0.0.1"],
    ca: providers.map((provider) => provider.certificate),
    resolve: async (hostname) => (hostname === "localhost" ? [{ address: "127.0.0.1", family: 4 }] : []),
  });
}

export async function startTestProvider(): Promise<TestProvider> {
  const certificate = createTestCertificate();
  const cert = readFileSync(certificate.certPath);
  const key = readFileSync(certificate.keyPath);
  const clients = new Map<string, AdapterPayload>();
  const accounts = new Map<string, ProviderAccount>();
  let pendingLogin: ProviderLogin | undefined;

  const signingKey = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey.export({ format: "jwk" });
  let provider: Provider | undefined;
  const server = https.createServer({ key, cert }, (req, res) => {
    if (!provider) return res.writeHead(503).end();
    if (req.url?.startsWith("/interaction/")) {
      const login = pendingLogin;
      if (!login) return res.writeHead(400).end("no login was chosen for this interaction");
      provider
        .interactionDetails(req, res)
        .then(() =>
          provider?.interactionFinished(
            req,
            res,
            { login: { accountId: login.sub, ...(login.amr ? { amr: login.amr } : {}) } },
            { mergeWithLastSubmission: false },
          ),
        )
        .catch((error: unknown) => res.writeHead(500).end(String(error)));
      return;
    }
    provider.callback()(req, res);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  const issuer = `https://localhost:${port}`;

  provider = new Provider(issuer, {
    adapter: memoryAdapters(clients),
    clients: [],
    async findAccount(_ctx, sub) {
      const account = accounts.get(sub);
      return account && { accountId: sub, claims: () => ({ ...account.claims, sub }) };
    },
    // amr rides on the openid scope, so every ID token says how the person was authenticated.
    claims: { openid: ["sub", "amr"], email: ["email", "email_verified"], profile: ["name"] },
    features: { devInteractions: { enabled: false } },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    loadExistingGrant,
    pkce: { required: () => true },
    cookies: { keys: [randomBytes(32).toString("hex")] },
    ttl: { AccessToken: 600, AuthorizationCode: 60, Grant: 3600, IdToken: 600, Interaction: 600, Session: 3600 },
    jwks: { keys: [{ ...signingKey, kid: randomUUID(), alg: "RS256", use: "sig" }] },
  });

  /** One request as a browser sends it, to the provider only; answers the status, location and cookies. */
  function get(url: URL, jar: Map<string, string>): Promise<{ status: number; location: string | undefined }> {
    return new Promise((resolve, reject) => {
      const cookie = [...jar].map(([name, value]) => `${name}=${value}`).join("; ");
      const request = https.request(
        {
          host: "127.0.0.1",
          servername: "localhost",
          port,
          path: `${url.pathname}${url.search}`,
          method: "GET",
          ca: cert,
          headers: { host: url.host, ...(cookie ? { cookie } : {}) },
        },
        (response) => {
          for (const line of response.headers["set-cookie"] ?? []) {
            const [pair = ""] = line.split(";");
            const eq = pair.indexOf("=");
            if (eq > 0) jar.set(pair.slice(0, eq).trim(), pair.slice(eq + 1).trim());
          }
          let body = "";
          response.on("data", (chunk: Buffer) => {
            body += chunk.toString("utf8");
          });
          response.on("end", () => {
            const location = response.headers.location;
            if (response.statusCode && response.statusCode >= 400) {
              reject(new Error(`the provider answered ${response.statusCode}: ${body.slice(0, 500)}`));
            } else resolve({ status: response.statusCode ?? 0, location });
          });
        },
      );
      request.on("error", reject);
      request.end();
    });
  }

  return {
    issuer,
    certificate: cert,
    addClient({ clientId, clientSecret, redirectUri }) {
      clients.set(clientId, {
        client_id: clientId,
        client_secret: clientSecret,
        redirect_uris: [redirectUri],
        grant_types: ["authorization_code"],
        response_types: ["code"],
        token_endpoint_auth_method: "client_secret_basic",
      });
    },
    setAccount(account) {
      accounts.set(account.sub, account);
    },
    async authorize(start, login) {
      const jar = new Map<string, string>();
      pendingLogin = login;
      try {
        let url = new URL(start);
        for (let hop = 0; hop < 10; hop++) {
          const { location } = await get(url, jar);
          if (!location) throw new Error(`the provider did not redirect from ${url.pathname}`);
          const next = new URL(location, url);
          if (next.origin !== new URL(issuer).origin) return next;
          url = next;
        }
        throw new Error("the provider redirected too many times");
      } finally {
        pendingLogin = undefined;
      }
    },
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await closed;
      certificate.remove();
    },
  };
}
