"""The voter on hand-made ballot boxes, natively. Generate the bindings once
(componentize-py -d wit -w voter bindings bindings), then: python3 -m unittest"""

import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
if not os.path.isdir(os.path.join(HERE, "bindings", "wit_world")):
    sys.exit("no bindings: run `componentize-py -d wit -w voter bindings bindings` first")
sys.path.insert(0, os.path.join(HERE, "bindings"))
sys.path.insert(0, HERE)

from componentize_py_types import Err  # noqa: E402
from wit_world.imports import types, voting  # noqa: E402

import app  # noqa: E402


def task(config: str = "{}") -> types.Task:
    return types.Task("t", "r", "What is 2 + 2?", types.AnswerKind.NUMBER, 0, 0, 3, [], config, None)


def ballot_box(answers, votes) -> voting.BallotBox:
    ballots = [voting.Ballot(i, a, None) for i, a in enumerate(votes)]
    return voting.BallotBox(list(answers), [], ballots, [], [])


class Voter(unittest.TestCase):
    def test_plurality_wins_and_names_the_runner_up(self):
        d = app.WitWorld().tally(task(), ballot_box(["5", "6"], [0, 1, 0]))
        self.assertIsInstance(d, types.Decision_Decided)
        self.assertEqual(d.value, types.Decided("5", 2, 3, "6"))

    def test_a_tie_goes_to_the_better_verified_answer(self):
        box = ballot_box(["5", "6"], [0, 1])
        box.verifiers = ["check"]
        box.marks = [voting.Mark(0, 0, False, 0.2), voting.Mark(1, 0, True, 0.9)]
        d = app.WitWorld().tally(task(), box)
        self.assertEqual(d.value.answer, "6")

    def test_too_few_votes_is_no_consensus(self):
        d = app.WitWorld().tally(task('{"min_votes": 2}'), ballot_box(["5", "6"], [0, 1]))
        self.assertIsInstance(d, types.Decision_NoConsensus)
        self.assertIn("1 of the 2", d.value)

    def test_bad_config_is_refused(self):
        with self.assertRaises(Err) as e:
            app.WitWorld().tally(task('{"min_vote": 2}'), ballot_box(["5"], [0]))
        self.assertIsInstance(e.exception.value, types.PluginError_InvalidConfig)

    def test_describe_names_the_plugin(self):
        d = app.WitWorld().describe()
        self.assertEqual((d.name, d.kind), ("{{name}}", types.PluginKind.VOTER))


if __name__ == "__main__":
    unittest.main()
