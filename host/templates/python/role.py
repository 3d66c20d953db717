"""{{name}}: a Conclave role (world `role` of wit/conclave.wit). Grant it
`llm` in the team spec (grants = ["llm"]).

Build: componentize-py -d wit -w role componentize app -o {{name}}.wasm
Test:  componentize-py -d wit -w role bindings bindings && python3 -m unittest
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import llm, types

import conclave_helpers as helpers

KINDS = {
    types.AnswerKind.NUMBER: "number",
    types.AnswerKind.CHOICE: "choice",
    types.AnswerKind.TEXT: "text",
}
#: Sampling and routing settings the role accepts in its config, like the
#: built-in solver: `config = { temperature = 0.7, max_tokens = 256 }`.
CONFIG_KEYS = {"temperature", "max_tokens", "tags", "node"}


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
    return config


def request(task: types.Task, config: dict) -> llm.ChatRequest:
    """Solve the task (again, in the light of any feedback from a previous
    round) and end with an `Answer:` line."""
    pairs = helpers.revise(task.prompt, KINDS[task.answer_kind], task.feedback)
    return llm.ChatRequest(
        messages=[types.Message(role, content) for role, content in pairs],
        max_tokens=config.get("max_tokens"),
        temperature=config.get("temperature"),
        stop=[],
        route=llm.Route(tags=list(config.get("tags", [])), node=config.get("node", "")),
    )


def candidate(task: types.Task, text: str) -> types.Candidate:
    """This replica's candidate: the answer of the task's kind extracted from
    the reply (empty when there is none). The host fills in the node."""
    answer = helpers.extract(text, KINDS[task.answer_kind]) or ""
    return types.Candidate(task.replica, "", answer, text, None, [])


class WitWorld(wit_world.WitWorld):
    def describe(self) -> types.Descriptor:
        return types.Descriptor(
            name="{{name}}",
            version="0.1.0",
            kind=types.PluginKind.ROLE,
            capabilities=[types.Capability.LLM, types.Capability.LOG],
            description="{{description}}",
        )

    def run(self, task: types.Task) -> types.Outcome:
        config = parse_config(task)
        try:
            reply = llm.chat(request(task, config))
        except Err as e:
            raise Err(types.PluginError_Model(f"the model call failed: {e.value}"))
        return types.Outcome_Candidate(candidate(task, reply.text))
