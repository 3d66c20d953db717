// For `node --test` only: resolves the WIT imports ("conclave:plugin/...")
// to fake-host.js, so that app.js loads outside a component. The component
// build (jco componentize) never reads this file.
import { register } from "node:module";

const fake = new URL("./fake-host.js", import.meta.url).href;
const hooks = `
export async function resolve(specifier, context, next) {
  if (specifier.startsWith("conclave:plugin/")) {
    return { url: ${JSON.stringify(fake)}, shortCircuit: true };
  }
  return next(specifier, context);
}`;
register("data:text/javascript," + encodeURIComponent(hooks));
