"""The Python helpers against the Rust SDK's cases (sdk/cases/helpers.json):
every case there, one subtest each. Run: python3 -m unittest discover -s sdk/python"""

import json
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import conclave_helpers as h  # noqa: E402

with open(os.path.join(HERE, "..", "cases", "helpers.json"), encoding="utf-8") as f:
    CASES = json.load(f)


class AgreesWithTheRustSdk(unittest.TestCase):
    def assert_counts(self, got, expected):
        self.assertEqual([(c.answer, c.votes) for c in got], [(c["answer"], c["votes"]) for c in expected])
        for g, e in zip(got, expected):
            self.assertAlmostEqual(g.weight, e["weight"], delta=1e-12)
            self.assertAlmostEqual(g.score, e["score"], delta=1e-12)

    def test_extract_gives_the_same_answer(self):
        self.assertGreater(len(CASES["extract"]), 30)
        for c in CASES["extract"]:
            with self.subTest(text=c["text"], kind=c["kind"]):
                self.assertEqual(h.extract(c["text"], c["kind"]), c["expected"])

    def test_normalize_gives_the_same_spelling(self):
        for c in CASES["normalize"]:
            with self.subTest(answer=c["answer"], kind=c["kind"]):
                self.assertEqual(h.normalize(c["answer"], c["kind"]), c["expected"])
                self.assertTrue(h.same(c["answer"], c["expected"], c["kind"]))

    def test_tally_and_borda_give_the_same_counts(self):
        for c in CASES["tally"]:
            with self.subTest(votes=c["votes"]):
                self.assert_counts(h.tally([h.Vote(**v) for v in c["votes"]]), c["expected"])
                self.assert_counts(h.tally([h.Vote(**v) for v in reversed(c["votes"])]), c["expected"])
        for c in CASES["borda"]:
            with self.subTest(rankings=c["rankings"]):
                self.assert_counts(h.borda(c["rankings"]), c["expected"])

    def test_quorum_and_posterior_give_the_same_numbers(self):
        for c in CASES["meets_share"]:
            with self.subTest(**c):
                self.assertEqual(h.meets_share(c["votes"], c["total"], c["share"]), c["expected"])
        for c in CASES["leader_posterior"]:
            with self.subTest(**c):
                self.assertAlmostEqual(h.leader_posterior(c["leader"], c["runner_up"]), c["expected"], delta=1e-12)
        for c in CASES["samples_to_reach"]:
            with self.subTest(**c):
                got = h.samples_to_reach(c["leader"], c["runner_up"], c["threshold"], c["left"])
                self.assertEqual(got, c["expected"])

    def test_prompts_are_the_same_text(self):
        for c in CASES["solve"]:
            self.assertEqual([list(m) for m in h.solve(c["question"], c["kind"])], c["expected"])
        for c in CASES["revise"]:
            got = h.revise(c["question"], c["kind"], c["feedback"])
            self.assertEqual([list(m) for m in got], c["expected"])
        for c in CASES["with_choices"]:
            self.assertEqual(h.with_choices(c["question"], c["choices"]), c["expected"])

    def test_decide_takes_the_best_with_the_second_as_runner_up(self):
        counts = h.tally([h.Vote("5"), h.Vote("5"), h.Vote("6")])
        self.assertEqual(h.decide(counts, 3), ("decided", h.Decided("5", 2, 3, "6")))
        self.assertEqual(h.decide([], 0, "nothing"), ("no-consensus", "nothing"))

    def test_unknown_kind_is_refused(self):
        with self.assertRaises(ValueError):
            h.extract("1", "integer")


if __name__ == "__main__":
    unittest.main()
