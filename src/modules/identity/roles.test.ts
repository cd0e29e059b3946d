import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { lowerRole, outranks, permissionTableMarkdown, roleAllows, statusAllows } from "./roles.ts";

describe("roles and permissions (T5)", () => {
  it("the README shows the permission table as the code has it", () => {
    const readme = readFileSync(new URL("../../../README.md", import.meta.url), "utf8");
    expect(readme).toContain(permissionTableMarkdown());
  });

  it("ranks roles owner > admin > member > viewer > guest", () => {
    expect(outranks("owner", "admin")).toBe(true);
    expect(outranks("admin", "member")).toBe(true);
    expect(outranks("member", "viewer")).toBe(true);
    expect(outranks("viewer", "guest")).toBe(true);
    expect(outranks("admin", "admin")).toBe(false);
    expect(lowerRole("owner", "viewer")).toBe("viewer");
    expect(lowerRole("member", "admin")).toBe("member");
  });

  it("guests hold no permission until records can be shared", () => {
    expect(roleAllows("guest", "tenant.read")).toBe(false);
    expect(roleAllows("viewer", "tenant.read")).toBe(true);
    expect(roleAllows("viewer", "tenant.settings.update")).toBe(false);
  });

  it("a cancelled tenant allows reads only; a suspended or deleted one nothing", () => {
    expect(statusAllows("cancelled", "tenant.read")).toBe(true);
    expect(statusAllows("pending-deletion", "members.list")).toBe(true);
    expect(statusAllows("cancelled", "tenant.settings.update")).toBe(false);
    expect(statusAllows("suspended", "tenant.read")).toBe(false);
    expect(statusAllows("deleted", "tenant.read")).toBe(false);
    expect(statusAllows("active", "members.manage")).toBe(true);
  });
});
