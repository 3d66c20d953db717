"""The role with a fake model, natively. Generate the bindings once
(componentize-py -d wit -w role bindings bindings), then: python3 -m unittest"""

import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
if not os.path.isdir(os.path.join(HERE, "bindings", "wit_world")):
    sys.exit("no bindings: run `componentize-py -d wit -w role bindings bindings` first")
sys.path.insert(0, os.path.join(HERE, "bindings"))
sys.path.insert(0, HERE)

from componentize_py_types import Err  # noqa: E402
from wit_world.imports import llm, types  # noqa: E402

import app  # noqa: E402


def task(config: str = "{}") -> types.Task:
    return types.Task("t", "r", "What is 2 + 2?", types.AnswerKind.NUMBER, 0, 3, 5, [], config, None)


class Role(unittest.TestCase):
    def setUp(self):
        self.requests = []
        real = app.llm.chat

        def fake(request):
            self.requests.append(request)
            return llm.ChatResponse("2 and 2 make 4.\nAnswer: 4", "fake", 10, 5)

        app.llm.chat = fake
        self.addCleanup(setattr, app.llm, "chat", real)

    def test_run_asks_for_an_answer_line_and_extracts_it(self):
        out = app.WitWorld().run(task('{"max_tokens": 64}'))
        self.assertIsInstance(out, types.Outcome_Candidate)
        self.assertEqual((out.value.answer, out.value.replica), ("4", 3))
        (r,) = self.requests
        self.assertIn("Answer: <number>", r.messages[0].content)
        self.assertEqual((r.messages[1].content, r.max_tokens), ("What is 2 + 2?", 64))

    def test_bad_config_is_refused(self):
        with self.assertRaises(Err) as e:
            app.WitWorld().run(task('{"temprature": 1}'))
        self.assertIsInstance(e.exception.value, types.PluginError_InvalidConfig)


if __name__ == "__main__":
    unittest.main()
