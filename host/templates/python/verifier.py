"""{{name}}: a Conclave verifier (world `verifier` of wit/conclave.wit).

Build: componentize-py -d wit -w verifier componentize app -o {{name}}.wasm
Test:  componentize-py -d wit -w verifier bindings bindings && python3 -m unittest
"""

import wit_world
from wit_world.imports import types

import conclave_helpers as helpers

KINDS = {
    types.AnswerKind.NUMBER: "number",
    types.AnswerKind.CHOICE: "choice",
    types.AnswerKind.TEXT: "text",
}


def judge(task: types.Task, candidate: types.Candidate) -> types.Verdict:
    """Passes a candidate whose text states an answer of the expected kind
    that agrees with the candidate's answer."""
    kind = KINDS[task.answer_kind]
    found = helpers.extract(candidate.text, kind)
    if found is None:
        ok, reason = False, f"the text states no {kind} answer"
    elif helpers.same(found, candidate.answer, kind):
        ok, reason = True, f"the text states {found!r}"
    else:
        ok, reason = False, f"the text states {found!r}, not {candidate.answer!r}"
    return types.Verdict("{{name}}", ok, 1.0 if ok else 0.0, reason)


class WitWorld(wit_world.WitWorld):
    def describe(self) -> types.Descriptor:
        return types.Descriptor(
            name="{{name}}",
            version="0.1.0",
            kind=types.PluginKind.VERIFIER,
            capabilities=[types.Capability.LOG],
            description="{{description}}",
        )

    def verify(self, task: types.Task, candidate: types.Candidate) -> types.Verdict:
        return judge(task, candidate)
