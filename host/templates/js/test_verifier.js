// The verifier on hand-made candidates, natively: npm test
import { test } from "node:test";
import assert from "node:assert/strict";
import { verify } from "./app.js";

const task = {
  id: "t",
  runId: "r",
  prompt: "What is 2 + 2?",
  answerKind: "number",
  round: 0,
  replica: 0,
  replicas: 1,
  feedback: [],
  config: "{}",
  checker: undefined,
};

const candidate = (answer, text) => ({ replica: 0, node: "", answer, text, confidence: undefined, ranking: [] });

test("a stated matching answer passes", () => {
  const v = verify(task, candidate("4", "2 + 2 = 4\nAnswer: 4"));
  assert.equal(v.pass, true, v.reason);
  assert.equal(v.score, 1);
});

test("a missing or different answer fails", () => {
  let v = verify(task, candidate("4", "I am not sure."));
  assert.equal(v.pass, false);
  assert.match(v.reason, /no number/);
  v = verify(task, candidate("4", "Answer: 5"));
  assert.equal(v.pass, false);
  assert.match(v.reason, /"5"/);
});
