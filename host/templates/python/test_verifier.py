"""The verifier on hand-made candidates, natively. Generate the bindings once
(componentize-py -d wit -w verifier bindings bindings), then: python3 -m unittest"""

import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
if not os.path.isdir(os.path.join(HERE, "bindings", "wit_world")):
    sys.exit("no bindings: run `componentize-py -d wit -w verifier bindings bindings` first")
sys.path.insert(0, os.path.join(HERE, "bindings"))
sys.path.insert(0, HERE)

from wit_world.imports import types  # noqa: E402

import app  # noqa: E402


def task() -> types.Task:
    return types.Task("t", "r", "What is 2 + 2?", types.AnswerKind.NUMBER, 0, 0, 1, [], "{}", None)


def candidate(answer: str, text: str) -> types.Candidate:
    return types.Candidate(0, "", answer, text, None, [])


class Verifier(unittest.TestCase):
    def test_a_stated_matching_answer_passes(self):
        v = app.WitWorld().verify(task(), candidate("4", "2 + 2 = 4\nAnswer: 4"))
        self.assertTrue(v.pass_, v.reason)
        self.assertEqual(v.score, 1.0)

    def test_a_missing_or_different_answer_fails(self):
        v = app.WitWorld().verify(task(), candidate("4", "I am not sure."))
        self.assertFalse(v.pass_)
        self.assertIn("no number", v.reason)
        v = app.WitWorld().verify(task(), candidate("4", "Answer: 5"))
        self.assertFalse(v.pass_)
        self.assertIn("'5'", v.reason)


if __name__ == "__main__":
    unittest.main()
