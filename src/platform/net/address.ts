import { isIPv4, isIPv6 } from "node:net";

/**
 * Classification of IP addresses for outbound calls (OWASP ASVS 5.0 SSRF requirements).
 *
 * IPv4: a list of special-purpose ranges (IANA registry) is refused.
 * IPv6: only global unicast (2000::/3) is accepted, minus its special-purpose parts; an IPv4 address carried
 * inside IPv6 (IPv4-mapped, IPv4-compatible, NAT64 64:ff9b::/96, 6to4 2002::/16) is judged as that IPv4
 * address, and forms whose embedded address cannot be judged reliably (Teredo and the other IETF protocol
 * assignments in 2001::/23, local-use NAT64 64:ff9b:1::/48) are refused outright.
 */

interface Range4 {
  base: number;
  bits: number;
  name: string;
}

const RANGES_V4: readonly Range4[] = [
  r4("0.0.0.0", 8, "this network / unspecified"),
  r4("10.0.0.0", 8, "private"),
  r4("100.64.0.0", 10, "carrier-grade NAT"),
  r4("127.0.0.0", 8, "loopback"),
  r4("169.254.169.254", 32, "cloud metadata service"),
  r4("169.254.0.0", 16, "link-local"),
  r4("172.16.0.0", 12, "private"),
  r4("168.63.129.16", 32, "cloud platform service (Azure wire server)"),
  r4("192.0.0.0", 24, "IETF protocol assignments"),
  r4("192.0.2.0", 24, "documentation"),
  r4("192.31.196.0", 24, "AS112"),
  r4("192.52.193.0", 24, "AMT"),
  r4("192.88.99.0", 24, "6to4 relay anycast"),
  r4("192.168.0.0", 16, "private"),
  r4("192.175.48.0", 24, "AS112 direct delegation"),
  r4("198.18.0.0", 15, "benchmarking"),
  r4("198.51.100.0", 24, "documentation"),
  r4("203.0.113.0", 24, "documentation"),
  r4("224.0.0.0", 4, "multicast"),
  r4("240.0.0.0", 4, "reserved (includes broadcast 255.255.255.255)"),
];

interface Range6 {
  bytes: Uint8Array;
  bits: number;
  name: string;
}

/** Special-purpose ranges inside 2000::/3, refused. (Everything outside 2000::/3 is refused anyway.) */
const RANGES_V6: readonly Range6[] = [
  r6("2001::", 23, "IETF protocol assignments (Teredo and others)"),
  r6("2001:db8::", 32, "documentation"),
  r6("3fff::", 20, "documentation"),
];

function r4(base: string, bits: number, name: string): Range4 {
  const value = parseIPv4(base);
  if (value === undefined) throw new Error(`bad range ${base}`);
  return { base: value, bits, name };
}

function r6(base: string, bits: number, name: string): Range6 {
  const bytes = parseIPv6(base);
  if (!bytes) throw new Error(`bad range ${base}`);
  return { bytes, bits, name };
}

/** Dotted-quad IPv4 (strict: four decimal parts, as node:net accepts them) → unsigned 32-bit integer. */
export function parseIPv4(text: string): number | undefined {
  if (!isIPv4(text)) return undefined;
  const parts = text.split(".").map(Number);
  return (((parts[0] ?? 0) << 24) | ((parts[1] ?? 0) << 16) | ((parts[2] ?? 0) << 8) | (parts[3] ?? 0)) >>> 0;
}

export function formatIPv4(value: number): string {
  return [value >>> 24, (value >>> 16) & 255, (value >>> 8) & 255, value & 255].join(".");
}

/** IPv6 text (with `::` and an optional trailing dotted quad; no zone id) → 16 bytes. */
export function parseIPv6(text: string): Uint8Array | undefined {
  if (!isIPv6(text) || text.includes("%")) return undefined;
  let head = text;
  const tailBytes: number[] = [];
  const lastColon = text.lastIndexOf(":");
  const maybeV4 = text.slice(lastColon + 1);
  if (maybeV4.includes(".")) {
    const v4 = parseIPv4(maybeV4);
    if (v4 === undefined) return undefined;
    tailBytes.push(v4 >>> 24, (v4 >>> 16) & 255, (v4 >>> 8) & 255, v4 & 255);
    // Keep the colon(s) in front of the dotted quad so "::1.2.3.4" stays "::".
    head = text.slice(0, lastColon + 1);
    if (!head.endsWith("::")) head = head.slice(0, -1);
  }
  const groupsNeeded = (16 - tailBytes.length) / 2;
  const halves = head.split("::");
  if (halves.length > 2) return undefined;
  const parse = (part: string) => (part === "" ? [] : part.split(":").map((g) => Number.parseInt(g, 16)));
  const left = parse(halves[0] ?? "");
  const right = halves.length === 2 ? parse(halves[1] ?? "") : [];
  const fill = halves.length === 2 ? groupsNeeded - left.length - right.length : 0;
  if (fill < 0 || (halves.length === 1 && left.length !== groupsNeeded)) return undefined;
  const groups = [...left, ...new Array<number>(fill).fill(0), ...right];
  const bytes = new Uint8Array(16);
  groups.forEach((g, i) => {
    bytes[i * 2] = g >>> 8;
    bytes[i * 2 + 1] = g & 255;
  });
  bytes.set(tailBytes, 16 - tailBytes.length);
  return bytes;
}

/** Canonical RFC 5952 text for 16 bytes (lower case, longest run of zero groups compressed). */
export function formatIPv6(bytes: Uint8Array): string {
  const groups: number[] = [];
  for (let i = 0; i < 8; i++) groups.push(((bytes[i * 2] ?? 0) << 8) | (bytes[i * 2 + 1] ?? 0));
  let bestStart = -1;
  let bestLength = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength && j - i >= 2) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(":");
  return `${hex.slice(0, bestStart).join(":")}::${hex.slice(bestStart + bestLength).join(":")}`;
}

/** One canonical text per address, so that "::1" and "0:0:0:0:0:0:0:1" compare equal. */
export function canonicalAddress(address: string): string | undefined {
  const v4 = parseIPv4(address);
  if (v4 !== undefined) return formatIPv4(v4);
  const v6 = parseIPv6(address);
  return v6 ? formatIPv6(v6) : undefined;
}

function inRange4(value: number, range: Range4): boolean {
  if (range.bits === 0) return true;
  const mask = (0xffffffff << (32 - range.bits)) >>> 0;
  return (value & mask) >>> 0 === (range.base & mask) >>> 0;
}

function inRange6(bytes: Uint8Array, range: Range6): boolean {
  let bits = range.bits;
  for (let i = 0; bits > 0; i++, bits -= 8) {
    const mask = bits >= 8 ? 0xff : (0xff << (8 - bits)) & 0xff;
    if (((bytes[i] ?? 0) & mask) !== ((range.bytes[i] ?? 0) & mask)) return false;
  }
  return true;
}

const word = (b: Uint8Array, at: number) =>
  (((b[at] ?? 0) << 24) | ((b[at + 1] ?? 0) << 16) | ((b[at + 2] ?? 0) << 8) | (b[at + 3] ?? 0)) >>> 0;
const zero = (b: Uint8Array, from: number, to: number) => b.subarray(from, to).every((x) => x === 0);

function classifyIPv4(value: number): string | undefined {
  return RANGES_V4.find((range) => inRange4(value, range))?.name;
}

function classifyIPv6(bytes: Uint8Array): string | undefined {
  // IPv4-mapped ::ffff:a.b.c.d — judged as the IPv4 address it carries.
  if (zero(bytes, 0, 10) && bytes[10] === 0xff && bytes[11] === 0xff) {
    const inner = classifyIPv4(word(bytes, 12));
    return inner && `IPv4-mapped ${inner}`;
  }
  // ::/96 holds the unspecified address, loopback and the deprecated IPv4-compatible form: all refused.
  if (zero(bytes, 0, 12)) return "unspecified, loopback or IPv4-compatible";
  // IPv4/IPv6 translation (NAT64 well-known prefix): judged as the embedded IPv4 address.
  if (word(bytes, 0) === 0x0064ff9b && zero(bytes, 4, 12)) {
    const inner = classifyIPv4(word(bytes, 12));
    return inner && `NAT64 ${inner}`;
  }
  // Everything else outside global unicast: multicast ff00::/8, link-local fe80::/10, site-local fec0::/10,
  // unique-local fc00::/7, discard 100::/64, local-use NAT64 64:ff9b:1::/48, SRv6 5f00::/16, unassigned space.
  if (((bytes[0] ?? 0) & 0xe0) !== 0x20) return "not global unicast";
  // 6to4 2002:V4ADDR::/48 — judged as the embedded IPv4 address.
  if (bytes[0] === 0x20 && bytes[1] === 0x02) {
    const inner = classifyIPv4(word(bytes, 2));
    return inner && `6to4 ${inner}`;
  }
  return RANGES_V6.find((range) => inRange6(bytes, range))?.name;
}

/**
 * Why an address must not be called, or undefined when it is a public unicast address. Anything that is
 * not a well-formed IP address is refused ("not an IP address").
 */
export function refusalForAddress(address: string): string | undefined {
  const v4 = parseIPv4(address);
  if (v4 !== undefined) return classifyIPv4(v4);
  const v6 = parseIPv6(address);
  if (v6) return classifyIPv6(v6);
  return "not an IP address";
}

/** True when an outbound call may go to this address: a public unicast IPv4 or IPv6 address. */
export function isPublicAddress(address: string): boolean {
  return refusalForAddress(address) === undefined;
}
