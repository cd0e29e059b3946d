import { createTemplateRegistry, PLATFORM_TEMPLATES, type TemplateRegistry } from "../platform/mail/index.ts";
import { IDENTITY_TEMPLATES } from "./identity/index.ts";

/** Every mail template of the application: the platform's and each module's. */
export const APPLICATION_TEMPLATES: TemplateRegistry = createTemplateRegistry([
  ...PLATFORM_TEMPLATES,
  ...IDENTITY_TEMPLATES,
]);
