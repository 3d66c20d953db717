// The JavaScript helpers against the Rust SDK's cases (sdk/cases/helpers.json):
// every case there. Run: node --test sdk/js/
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as h from "./conclave_helpers.js";

const CASES = JSON.parse(readFileSync(new URL("../cases/helpers.json", import.meta.url), "utf8"));

function assertCounts(got, expected, what) {
  assert.deepEqual(
    got.map((c) => [c.answer, c.votes]),
    expected.map((c) => [c.answer, c.votes]),
    what,
  );
  got.forEach((g, i) => {
    assert.ok(Math.abs(g.weight - expected[i].weight) <= 1e-12, `${what}: weight of ${g.answer}`);
    assert.ok(Math.abs(g.score - expected[i].score) <= 1e-12, `${what}: score of ${g.answer}`);
  });
}

test("extract gives the same answer", () => {
  assert.ok(CASES.extract.length > 30);
  for (const c of CASES.extract) {
    assert.equal(h.extract(c.text, c.kind), c.expected, JSON.stringify(c));
  }
});

test("normalize gives the same spelling", () => {
  for (const c of CASES.normalize) {
    assert.equal(h.normalize(c.answer, c.kind), c.expected, JSON.stringify(c));
    assert.ok(h.same(c.answer, c.expected, c.kind), JSON.stringify(c));
  }
});

test("tally and borda give the same counts", () => {
  for (const c of CASES.tally) {
    assertCounts(h.tally(c.votes), c.expected, JSON.stringify(c.votes));
    assertCounts(h.tally([...c.votes].reverse()), c.expected, "reversed " + JSON.stringify(c.votes));
  }
  for (const c of CASES.borda) {
    assertCounts(h.borda(c.rankings), c.expected, JSON.stringify(c.rankings));
  }
});

test("quorum and posterior give the same numbers", () => {
  for (const c of CASES.meets_share) {
    assert.equal(h.meetsShare(c.votes, c.total, c.share), c.expected, JSON.stringify(c));
  }
  for (const c of CASES.leader_posterior) {
    const got = h.leaderPosterior(c.leader, c.runner_up);
    assert.ok(Math.abs(got - c.expected) <= 1e-12, `${JSON.stringify(c)}: ${got}`);
  }
  for (const c of CASES.samples_to_reach) {
    assert.equal(h.samplesToReach(c.leader, c.runner_up, c.threshold, c.left), c.expected, JSON.stringify(c));
  }
});

test("prompts are the same text", () => {
  for (const c of CASES.solve) assert.deepEqual(h.solve(c.question, c.kind), c.expected);
  for (const c of CASES.revise) assert.deepEqual(h.revise(c.question, c.kind, c.feedback), c.expected);
  for (const c of CASES.with_choices) assert.equal(h.withChoices(c.question, c.choices), c.expected);
});

test("decide takes the best with the second as runner-up", () => {
  const counts = h.tally([
    { answer: "5", weight: 1, score: 1 },
    { answer: "5", weight: 1, score: 1 },
    { answer: "6", weight: 1, score: 1 },
  ]);
  assert.deepEqual(h.decide(counts, 3), {
    tag: "decided",
    val: { answer: "5", support: 2, total: 3, runnerUp: "6" },
  });
  assert.deepEqual(h.decide([], 0, "nothing"), { tag: "no-consensus", val: "nothing" });
});

test("an unknown kind is refused", () => {
  assert.throws(() => h.extract("1", "integer"), /unknown answer kind/);
});
