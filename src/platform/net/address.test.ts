import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { canonicalAddress, formatIPv6, isPublicAddress, parseIPv6, refusalForAddress } from "./address.ts";

describe("address classification", () => {
  it.each([
    ["0.1.2.3", "this network / unspecified"],
    ["10.255.0.1", "private"],
    ["100.64.0.1", "carrier-grade NAT"],
    ["100.127.255.255", "carrier-grade NAT"],
    ["127.0.0.2", "loopback"],
    ["169.254.169.254", "cloud metadata service"],
    ["169.254.1.1", "link-local"],
    ["172.31.255.255", "private"],
    ["192.0.0.8", "IETF protocol assignments"],
    ["192.0.2.10", "documentation"],
    ["192.168.0.1", "private"],
    ["198.19.255.255", "benchmarking"],
    ["198.51.100.1", "documentation"],
    ["203.0.113.9", "documentation"],
    ["224.0.0.1", "multicast"],
    ["255.255.255.255", "reserved (includes broadcast 255.255.255.255)"],
    ["::1", "unspecified, loopback or IPv4-compatible"],
    ["::", "unspecified, loopback or IPv4-compatible"],
    ["::ffff:10.0.0.1", "IPv4-mapped private"],
    ["::ffff:a9fe:a9fe", "IPv4-mapped cloud metadata service"],
    ["64:ff9b::192.168.1.1", "NAT64 private"],
    ["64:ff9b:1::1", "not global unicast"],
    ["2002:a00:1::", "6to4 private"],
    ["2001:0:4136:e378::1", "IETF protocol assignments (Teredo and others)"],
    ["2001:db8::1", "documentation"],
    ["3fff::1", "documentation"],
    ["fe80::1", "not global unicast"],
    ["febf::1", "not global unicast"],
    ["fec0::1", "not global unicast"],
    ["fc00::1", "not global unicast"],
    ["fdff::1", "not global unicast"],
    ["ff02::1", "not global unicast"],
    ["100::1", "not global unicast"],
    ["localhost", "not an IP address"],
    ["fe80::1%eth0", "not an IP address"],
    ["", "not an IP address"],
  ])("refuses %s (%s)", (address, why) => {
    expect(refusalForAddress(address)).toBe(why);
    expect(isPublicAddress(address)).toBe(false);
  });

  it.each([
    "1.1.1.1",
    "8.8.8.8",
    "93.184.215.14",
    "100.63.255.255",
    "100.128.0.0",
    "172.15.255.255",
    "172.32.0.0",
    "198.17.255.255",
    "198.20.0.0",
    "223.255.255.255",
    "::ffff:8.8.8.8",
    "64:ff9b::8.8.8.8",
    "2002:808:808::1",
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
  ])("accepts the public address %s", (address) => {
    expect(refusalForAddress(address)).toBeUndefined();
    expect(isPublicAddress(address)).toBe(true);
  });

  it("gives every spelling of an address one canonical form", () => {
    expect(canonicalAddress("0:0:0:0:0:0:0:1")).toBe("::1");
    expect(canonicalAddress("::FFFF:127.0.0.1")).toBe("::ffff:7f00:1");
    expect(canonicalAddress("2001:DB8:0:0:1:0:0:1")).toBe("2001:db8::1:0:0:1");
    expect(canonicalAddress("1:2:3:4:5:6:7.8.9.10")).toBe("1:2:3:4:5:6:708:90a");
    expect(canonicalAddress("::1.2.3.4")).toBe("::102:304");
    expect(canonicalAddress("127.0.0.1")).toBe("127.0.0.1");
    expect(canonicalAddress("127.1")).toBeUndefined();
    expect(canonicalAddress("fe80::1%lo")).toBeUndefined();
  });

  it("property: IPv6 parsing and formatting agree with the URL parser's serialisation", () => {
    const groups = fc.array(fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 0xffff })), {
      minLength: 8,
      maxLength: 8,
    });
    fc.assert(
      fc.property(groups, fc.boolean(), (g, dottedTail) => {
        const tail = [(g[6] ?? 0) >> 8, (g[6] ?? 0) & 255, (g[7] ?? 0) >> 8, (g[7] ?? 0) & 255].join(".");
        const text = dottedTail
          ? `${g
              .slice(0, 6)
              .map((x) => x.toString(16))
              .join(":")}:${tail}`
          : g.map((x) => x.toString(16)).join(":");
        const bytes = parseIPv6(text);
        expect(bytes).toBeDefined();
        const expected = new URL(`http://[${text}]/`).hostname.slice(1, -1);
        expect(formatIPv6(bytes ?? new Uint8Array(16))).toBe(expected);
        expect(canonicalAddress(expected)).toBe(expected);
      }),
      { numRuns: 1000 },
    );
  });
});
