// {{name}}: a Conclave role (world `role` of wit/conclave.wit). Grant it
// `llm` in the team spec (grants = ["llm"]).
//
// Build: npm install && npm run build   (jco componentize app.js --bundle ... -o {{name}}.wasm)
// Test:  npm test                       (node --test with a fake host, see wit-stubs.mjs)
//
// jco maps the WIT to JavaScript: records are objects with camelCase fields,
// enums are their kebab-case names ("role", "number"), a variant is
// { tag, val }, an option is the value or undefined. Host interfaces are
// ES module imports named by the WIT ("conclave:plugin/llm@0.1.0"); an import
// that returns an error throws it. Throwing a { tag, val } plugin-error from
// an export returns that error.

import { chat } from "conclave:plugin/llm@0.1.0";
import { chatMessages, extract, revise } from "./conclave_helpers.js";

// Sampling and routing settings the role accepts in its config, like the
// built-in solver: `config = { temperature = 0.7, max_tokens = 256 }`.
const CONFIG_KEYS = ["temperature", "max_tokens", "tags", "node"];

function parseConfig(json) {
  let config;
  try {
    config = JSON.parse(json || "{}");
  } catch (e) {
    throw { tag: "invalid-config", val: `bad plugin config: ${e.message}` };
  }
  if (typeof config !== "object" || config === null || Array.isArray(config)) {
    throw { tag: "invalid-config", val: "bad plugin config: not an object" };
  }
  for (const key of Object.keys(config).filter((k) => !CONFIG_KEYS.includes(k))) {
    const expected = CONFIG_KEYS.map((k) => `\`${k}\``).join(", ");
    throw { tag: "invalid-config", val: `bad plugin config: unknown field \`${key}\`, expected one of ${expected}` };
  }
  return config;
}

export function describe() {
  return {
    name: "{{name}}",
    version: "0.1.0",
    kind: "role",
    capabilities: ["llm", "log"],
    description: "{{description}}",
  };
}

/**
 * Asks the model to solve the task (again, in the light of any feedback from
 * a previous round) and returns this replica's candidate, with the answer
 * of the task's kind extracted from the reply (empty when there is none).
 */
export function run(task) {
  const config = parseConfig(task.config);
  let reply;
  try {
    reply = chat({
      messages: chatMessages(revise(task.prompt, task.answerKind, task.feedback)),
      maxTokens: config.max_tokens,
      temperature: config.temperature,
      stop: [],
      route: { tags: config.tags ?? [], node: config.node ?? "" },
    });
  } catch (e) {
    const why = e?.payload ?? e;
    throw { tag: "model", val: `the model call failed: ${JSON.stringify(why?.val ?? why?.message ?? why)}` };
  }
  return {
    tag: "candidate",
    val: {
      replica: task.replica,
      node: "",
      answer: extract(reply.text, task.answerKind) ?? "",
      text: reply.text,
      confidence: undefined,
      ranking: [],
    },
  };
}
