"""{{name}}: a Conclave voter on contract 0.2 (world `voter` of wit/conclave.wit).

Build: componentize-py -d wit -w voter componentize app -o {{name}}.wasm
Test:  componentize-py -d wit -w voter bindings bindings && python3 -m unittest
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import types, voting

import conclave_helpers as helpers

CONFIG_KEYS = {"min_votes"}


def parse_config(task: types.Task) -> dict:
    """The plugin's configuration (`config = { min_votes = 2 }` in its
    [[plugin]] table of the team spec), refused when it is not valid."""
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


def decide(box: voting.BallotBox, min_votes: int) -> types.Decision:
    """Plurality over the ballots' answers; a vote's score (the first
    tie-break) is the mean of the verifiers' scores of its ballot (1 with
    none). Ballots carry answers as indices into `box.answers` and marks
    point at their ballot; texts stay in the host unless read through
    `wit_world.imports.ballot_texts`."""
    scores = [[] for _ in box.ballots]
    for m in box.marks:
        if m.ballot < len(scores):
            scores[m.ballot].append(m.score)
    votes = []
    for b, s in zip(box.ballots, scores):
        answer = box.answers[b.answer] if b.answer < len(box.answers) else ""
        votes.append(helpers.Vote(answer, 1.0, sum(s) / len(s) if s else 1.0))
    counts = helpers.tally(votes)
    total = sum(1 for v in votes if v.answer)
    if not counts:
        return types.Decision_NoConsensus(f"none of {len(box.ballots)} ballots had a countable answer")
    best = counts[0]
    if best.votes < min_votes:
        return types.Decision_NoConsensus(
            f"the leader {best.answer!r} has {best.votes} of the {min_votes} votes it needs")
    _, d = helpers.decide(counts, total)
    return types.Decision_Decided(types.Decided(d.answer, d.support, d.total, d.runner_up))


class WitWorld(wit_world.WitWorld):
    def describe(self) -> types.Descriptor:
        return types.Descriptor(
            name="{{name}}",
            version="0.1.0",
            kind=types.PluginKind.VOTER,
            capabilities=[types.Capability.LOG],
            description="{{description}}",
        )

    def tally(self, task: types.Task, ballots: voting.BallotBox) -> types.Decision:
        config = parse_config(task)
        return decide(ballots, max(int(config.get("min_votes", 1)), 1))
