"""programmer: program-aided solving. A Conclave role (world `role`) that
asks its model for a short Python program instead of an answer, runs the
program inside this plugin's own WebAssembly sandbox, and answers with what
the program printed. The program and its output are the candidate's text,
so verifiers and the journal see the reasoning.

Small models get arithmetic wrong and programs right: the model states the
relations, the interpreter does the sums.

Config (all optional):
    temperature, max_tokens, tags, node  sampling and routing, as `solver`
    attempts    model calls per replica (default 2): a program that fails
                (no program, a syntax error, an exception, a refused import,
                no output) is shown to the model with its error, once per
                further attempt
    max_steps   loop iterations, calls and comprehension items a program may
                take (default 100000)
    max_output  characters a program may print (default 4000)

See runner.py for what a program may and may not do. Built by
scripts/build-plugins.sh with componentize-py.
"""

import json
import re
from typing import List, Optional, Tuple

import wit_world
from componentize_py_types import Err
from wit_world.imports import llm, types

import conclave_helpers as helpers
import runner

KINDS = {
    types.AnswerKind.NUMBER: "number",
    types.AnswerKind.CHOICE: "choice",
    types.AnswerKind.TEXT: "text",
}
CONFIG_KEYS = {"temperature", "max_tokens", "tags", "node", "attempts", "max_steps", "max_output"}
LIMITS = {"attempts": (1, 5), "max_steps": (1, 10_000_000), "max_output": (1, 100_000)}

SYSTEM = (
    "You solve problems by writing Python. Reply with one short Python program "
    "in a ```python code block and nothing else. The program computes the answer "
    "step by step, with a variable for each quantity in the problem, and ends by "
    "printing the final answer alone. Use only plain Python and the math, fractions "
    "and decimal modules; do not read input."
)

#: One worked example, shown as an earlier turn. It is about a shop, not any
#: evaluation item: it teaches the form of the reply.
EXAMPLE_QUESTION = (
    "A baker makes 4 trays of 12 rolls each. She sells 30 rolls in the morning "
    "and half of the rest in the afternoon. How many rolls are left?"
)
EXAMPLE_PROGRAM = (
    "```python\n"
    "trays = 4\n"
    "rolls_per_tray = 12\n"
    "made = trays * rolls_per_tray\n"
    "after_morning = made - 30\n"
    "sold_afternoon = after_morning / 2\n"
    "left = after_morning - sold_afternoon\n"
    "print(left)\n"
    "```"
)

_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\r?\n(.*?)(?:```|\Z)", re.S)


def parse_config(task: types.Task) -> dict:
    try:
        config = json.loads(task.config or "{}")
    except ValueError as e:
        raise Err(types.PluginError_InvalidConfig(f"bad plugin config: {e}"))
    if not isinstance(config, dict):
        raise Err(types.PluginError_InvalidConfig("bad plugin config: not an object"))
    for key in sorted(set(config) - CONFIG_KEYS):
        expected = ", ".join(f"`{k}`" for k in sorted(CONFIG_KEYS))
        raise Err(types.PluginError_InvalidConfig(
            f"bad plugin config: unknown field `{key}`, expected one of {expected}"))
    for key, (low, high) in LIMITS.items():
        value = config.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or not low <= value <= high):
            raise Err(types.PluginError_InvalidConfig(
                f"bad plugin config: `{key}` must be an integer in {low}..={high}, not {value!r}"))
    return config


def program_in(reply: str) -> Optional[str]:
    """The program in a model's reply: its first fenced block (a block cut
    off by the token limit counts), or the whole reply when it parses as
    Python. None when there is none."""
    for block in _FENCE.findall(reply):
        if block.strip():
            return block.strip("\n")
    text = reply.strip()
    if text and runner.check(text) is None:
        return text
    return None


def answer_of(ran: runner.Ran, kind: str) -> Optional[str]:
    """The answer a program gave: the last line it printed (or its `answer`
    variable), normalised for the task's kind."""
    lines = [line for line in ran.output.splitlines() if line.strip()]
    raw = lines[-1] if lines else ran.value
    if raw is None:
        return None
    if kind == "number":
        return helpers.normalize_number(raw.strip()) or helpers.extract(raw, kind)
    return helpers.extract(raw, kind) or helpers.normalize(raw, kind) or None


def messages(task: types.Task) -> List[Tuple[str, str]]:
    question = task.prompt
    if task.feedback:
        notes = "\n".join(f"- {f}" for f in task.feedback)
        question = f"{question}\n\nEarlier answers were judged wrong:\n{notes}"
    return [
        ("system", SYSTEM),
        ("user", EXAMPLE_QUESTION),
        ("assistant", EXAMPLE_PROGRAM),
        ("user", question),
    ]


def solve(task: types.Task, config: dict) -> types.Candidate:
    kind = KINDS[task.answer_kind]
    turns = messages(task)
    failures = []
    for attempt in range(config.get("attempts", 2)):
        request = llm.ChatRequest(
            messages=[types.Message(role, content) for role, content in turns],
            max_tokens=config.get("max_tokens"),
            temperature=config.get("temperature"),
            stop=[],
            route=llm.Route(tags=list(config.get("tags", [])), node=config.get("node", "")),
        )
        try:
            reply = llm.chat(request).text
        except Err as e:
            raise Err(types.PluginError_Model(f"the model call failed: {e.value}"))
        program = program_in(reply)
        if program is None:
            why = "the reply held no Python program"
        else:
            ran = runner.run(program, config.get("max_steps", runner.MAX_STEPS),
                             config.get("max_output", runner.MAX_OUTPUT))
            answer = None if ran.error else answer_of(ran, kind)
            if answer:
                shown = ran.output.strip() or f"answer = {ran.value}"
                text = f"```python\n{program}\n```\nOutput:\n{shown}\nAnswer: {answer}"
                return types.Candidate(task.replica, "", answer, text, None, [])
            why = ran.error or "the program printed no answer"
        failures.append(f"attempt {attempt + 1}: {why}")
        turns = turns + [
            ("assistant", reply),
            ("user", f"That did not work: {why}. Reply with a corrected program "
                     "in a ```python code block that prints the final answer."),
        ]
    # No answer: an empty ballot, which voters do not count.
    return types.Candidate(task.replica, "", "", "No program gave an answer. " + "; ".join(failures),
                           None, [])


class WitWorld(wit_world.WitWorld):
    def describe(self) -> types.Descriptor:
        return types.Descriptor(
            name="programmer",
            version="0.1.0",
            kind=types.PluginKind.ROLE,
            capabilities=[types.Capability.LLM, types.Capability.LOG],
            description="Asks for a Python program, runs it in the sandbox, answers with its output.",
        )

    def run(self, task: types.Task) -> types.Outcome:
        return types.Outcome_Candidate(solve(task, parse_config(task)))
