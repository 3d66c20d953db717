// The role with a fake model, natively: npm test (node --import
// ./wit-stubs.mjs, which resolves the WIT imports to fake-host.js).
import { test } from "node:test";
import assert from "node:assert/strict";
import { host } from "./fake-host.js";
import { run } from "./app.js";

const task = (config = "{}") => ({
  id: "t",
  runId: "r",
  prompt: "What is 2 + 2?",
  answerKind: "number",
  round: 0,
  replica: 3,
  replicas: 5,
  feedback: [],
  config,
  checker: undefined,
});

test("run asks for an answer line and extracts it", () => {
  const requests = [];
  host.chat = (request) => {
    requests.push(request);
    return { text: "2 and 2 make 4.\nAnswer: 4", node: "fake", promptTokens: 10, completionTokens: 5 };
  };
  const out = run(task('{"max_tokens": 64}'));
  assert.equal(out.tag, "candidate");
  assert.equal(out.val.answer, "4");
  assert.equal(out.val.replica, 3);
  assert.equal(requests.length, 1);
  assert.match(requests[0].messages[0].content, /Answer: <number>/);
  assert.equal(requests[0].messages[1].content, "What is 2 + 2?");
  assert.equal(requests[0].maxTokens, 64);
});

test("a failed model call is a model error", () => {
  host.chat = () => {
    throw { tag: "unavailable", val: "no node" };
  };
  assert.throws(() => run(task()), (e) => e.tag === "model" && e.val.includes("no node"));
});

test("a bad config is refused", () => {
  assert.throws(() => run(task('{"temprature": 1}')), (e) => e.tag === "invalid-config");
});
