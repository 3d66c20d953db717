"""The program runner, natively: python3 -m unittest test_runner.

The same hostile programs also run inside the built component, through the
host (tests/all/programmer.rs); these cases pin down what the guard itself
refuses and reports."""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import runner  # noqa: E402


class Runs(unittest.TestCase):
    def test_prints_are_the_output(self):
        ran = runner.run("x = 17 * 3\nprint('total', x)\nfor i in range(3):\n    x -= 3\nprint(x)\n")
        self.assertIsNone(ran.error)
        self.assertEqual(ran.output, "total 51\n42\n")
        self.assertEqual(ran.steps, 3, "one step per loop iteration")

    def test_allowed_modules_work_and_show_only_their_public_names(self):
        ran = runner.run(
            "from fractions import Fraction\nimport math\n"
            "print(Fraction(1, 3) + Fraction(1, 6), math.gcd(12, 18))\n")
        self.assertEqual((ran.output, ran.error), ("1/2 6\n", None))
        # `fractions` imports `sys`; the program's view of it does not.
        ran = runner.run("import fractions\nprint(fractions.sys.modules)\n")
        self.assertIn("AttributeError", ran.error)

    def test_an_answer_variable_stands_in_for_output(self):
        ran = runner.run("answer = 6 * 7\n")
        self.assertEqual((ran.output, ran.value, ran.error), ("", "42", None))

    def test_a_program_that_raises_reports_its_error(self):
        ran = runner.run("print(1)\nx = 1 / 0\n")
        self.assertEqual(ran.output, "1\n")
        self.assertEqual(ran.error, "ZeroDivisionError: division by zero")

    def test_syntax_errors_name_the_line(self):
        self.assertEqual(runner.run("x = 1\nprint(x +)\n").error,
                         "syntax error on line 2: invalid syntax")


class Refuses(unittest.TestCase):
    def test_imports_outside_the_list(self):
        for source, name in [("import os\nprint(os.listdir('/'))", "os"),
                             ("import sys", "sys"),
                             ("from subprocess import run", "subprocess"),
                             ("import wit_world", "wit_world"),
                             ("from . import runner", "None")]:
            with self.subTest(source=source):
                ran = runner.run(source)
                self.assertIn(f"`{name}` is not allowed", ran.error)
                self.assertEqual(ran.steps, 0, "refused before it ran")

    def test_dynamic_imports_are_refused_too(self):
        # No `__import__` by name, and the builtin is the guarded one.
        ran = runner.run("m = __import__('os')")
        self.assertIn("name `__import__` is not allowed", ran.error)

    def test_the_usual_escapes_to_the_interpreter(self):
        escapes = [
            "().__class__.__base__.__subclasses__()",
            "print.__globals__['sys']",
            "g = (x for x in [1])\nf = g.gi_frame.f_back.f_globals",
            "try:\n    1/0\nexcept Exception as e:\n    t = e.__traceback__",
        ]
        for source in escapes:
            with self.subTest(source=source):
                ran = runner.run(source)
                self.assertIn("is not allowed", ran.error)
                self.assertEqual(ran.steps, 0)
        for name in ["open", "eval", "exec", "compile", "getattr", "globals", "input", "vars"]:
            with self.subTest(builtin=name):
                ran = runner.run(f"{name}('x')")
                self.assertEqual(ran.error, f"NameError: name '{name}' is not defined")


class Bounds(unittest.TestCase):
    def test_a_loop_that_never_ends_stops_at_max_steps(self):
        ran = runner.run("n = 0\nwhile True:\n    n += 1\n", max_steps=5_000)
        self.assertEqual(ran.error, "the program ran past 5000 steps")
        self.assertEqual(ran.steps, 5_001)

    def test_catching_the_stop_does_not_keep_a_loop_going(self):
        source = ("while True:\n    try:\n        while True:\n            pass\n"
                  "    except:\n        pass\n")
        ran = runner.run(source, max_steps=1_000)
        self.assertEqual(ran.error, "the program ran past 1000 steps")

    def test_output_is_capped(self):
        ran = runner.run("for i in range(10000):\n    print(i)\n", max_output=100)
        self.assertEqual(ran.error, "the program printed more than 100 characters")
        self.assertLessEqual(len(ran.output), 100)

    def test_a_huge_allocation_is_a_memory_error_not_a_crash(self):
        # Natively the allocator refuses 10**12 list slots at once; inside
        # the component the host's memory cap refuses far less.
        ran = runner.run("x = [0] * (10 ** 12)\n")
        self.assertEqual(ran.error, "the program ran out of memory")

    def test_long_sources_are_refused(self):
        ran = runner.run("x = 1\n" * 5_000)
        self.assertIn("over the 8000 allowed", ran.error)

    def test_comprehensions_lambdas_and_recursion_count_steps(self):
        for source in ["x = [0 for i in range(10 ** 9) if False]",
                       "f = lambda n: f(n - 1) + f(n - 1) if n else 0\nf(60)",
                       "def f(n):\n    return f(n - 1) + f(n - 1) if n else 0\nf(60)"]:
            with self.subTest(source=source):
                ran = runner.run(source, max_steps=2_000)
                self.assertEqual(ran.error, "the program ran past 2000 steps")

    def test_a_program_cannot_reach_or_replace_its_step_counter(self):
        for source in ["__tick__ = lambda: None", "del __tick__", "__ticked__ = iter"]:
            with self.subTest(source=source):
                self.assertIn("is not allowed", runner.run(source).error)


if __name__ == "__main__":
    unittest.main()
