// The voter on hand-made ballot boxes, natively: npm test
import { test } from "node:test";
import assert from "node:assert/strict";
import { describe, tally } from "./app.js";

const task = (config = "{}") => ({
  id: "t",
  runId: "r",
  prompt: "What is 2 + 2?",
  answerKind: "number",
  round: 0,
  replica: 0,
  replicas: 3,
  feedback: [],
  config,
  checker: undefined,
});

const ballotBox = (answers, votes) => ({
  answers,
  verifiers: [],
  ballots: votes.map((answer, replica) => ({ replica, answer, confidence: undefined })),
  marks: [],
  rankings: [],
});

test("plurality wins and names the runner-up", () => {
  assert.deepEqual(tally(task(), ballotBox(["5", "6"], [0, 1, 0])), {
    tag: "decided",
    val: { answer: "5", support: 2, total: 3, runnerUp: "6" },
  });
});

test("a tie goes to the better verified answer", () => {
  const box = ballotBox(["5", "6"], [0, 1]);
  box.verifiers = ["check"];
  box.marks = [
    { ballot: 0, verifier: 0, pass: false, score: 0.2 },
    { ballot: 1, verifier: 0, pass: true, score: 0.9 },
  ];
  assert.equal(tally(task(), box).val.answer, "6");
});

test("too few votes is no consensus", () => {
  const d = tally(task('{"min_votes": 2}'), ballotBox(["5", "6"], [0, 1]));
  assert.equal(d.tag, "no-consensus");
  assert.match(d.val, /1 of the 2/);
});

test("a bad config is refused", () => {
  assert.throws(() => tally(task('{"min_vote": 2}'), ballotBox(["5"], [0])), (e) => e.tag === "invalid-config");
});

test("describe names the plugin", () => {
  assert.equal(describe().name, "{{name}}");
  assert.equal(describe().kind, "voter");
});
