// {{name}}: a Conclave verifier (world `verifier` of wit/conclave.wit).
//
// Build: npm install && npm run build   (jco componentize app.js --bundle ... -o {{name}}.wasm)
// Test:  npm test                       (node --test, no component needed)
//
// jco maps the WIT to JavaScript: records are objects with camelCase fields,
// enums are their kebab-case names ("verifier", "number"), a variant is
// { tag, val }, an option is the value or undefined.

import { extract, same } from "./conclave_helpers.js";

export function describe() {
  return {
    name: "{{name}}",
    version: "0.1.0",
    kind: "verifier",
    capabilities: ["log"],
    description: "{{description}}",
  };
}

/**
 * Passes a candidate whose text states an answer of the expected kind that
 * agrees with the candidate's answer.
 */
export function verify(task, candidate) {
  const kind = task.answerKind;
  const found = extract(candidate.text, kind);
  let pass = false;
  let reason;
  if (found === null) {
    reason = `the text states no ${kind} answer`;
  } else if (same(found, candidate.answer, kind)) {
    pass = true;
    reason = `the text states ${JSON.stringify(found)}`;
  } else {
    reason = `the text states ${JSON.stringify(found)}, not ${JSON.stringify(candidate.answer)}`;
  }
  return { verifier: "{{name}}", pass, score: pass ? 1 : 0, reason };
}
