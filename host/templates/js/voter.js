// {{name}}: a Conclave voter on contract 0.2 (world `voter` of wit/conclave.wit).
//
// Build: npm install && npm run build   (jco componentize app.js --bundle ... -o {{name}}.wasm)
// Test:  npm test                       (node --test, no component needed)
//
// jco maps the WIT to JavaScript: records are objects with camelCase fields,
// enums are their kebab-case names ("voter", "number"), a variant is
// { tag, val }, an option is the value or undefined. Throwing a
// { tag, val } plugin-error from an export returns that error.

import { tally as count, decide } from "./conclave_helpers.js";

const CONFIG_KEYS = ["min_votes"];

/** The plugin's configuration (`config = { min_votes = 2 }` in its [[plugin]] table). */
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
    kind: "voter",
    capabilities: ["log"],
    description: "{{description}}",
  };
}

/**
 * Plurality over the ballots' answers; a vote's score (the first tie-break)
 * is the mean of the verifiers' scores of its ballot (1 with none). Ballots
 * carry answers as indices into `box.answers` and marks point at their
 * ballot; texts stay in the host unless read through the
 * "conclave:plugin/ballot-texts@0.2.0" import.
 */
export function tally(task, box) {
  const minVotes = Math.max(parseConfig(task.config).min_votes ?? 1, 1);
  const scores = box.ballots.map(() => []);
  for (const m of box.marks) scores[m.ballot]?.push(m.score);
  const votes = box.ballots.map((b, i) => ({
    answer: box.answers[b.answer] ?? "",
    weight: 1,
    score: scores[i].length === 0 ? 1 : scores[i].reduce((s, x) => s + x, 0) / scores[i].length,
  }));
  const counts = count(votes);
  const total = votes.filter((v) => v.answer !== "").length;
  if (counts.length > 0 && counts[0].votes < minVotes) {
    return {
      tag: "no-consensus",
      val: `the leader ${JSON.stringify(counts[0].answer)} has ${counts[0].votes} of the ${minVotes} votes it needs`,
    };
  }
  return decide(counts, total, `none of ${box.ballots.length} ballots had a countable answer`);
}
