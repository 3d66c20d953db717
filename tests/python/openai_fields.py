"""Drive a `conclave serve` of several teams with the official OpenAI client.

Usage: python3 tests/python/openai_fields.py BASE_URL TEAM...

Each TEAM is asked plainly and streamed (with and without
`stream_options.include_usage`); then, on the first team, every request
field the server documents: `n`, `max_tokens`, `temperature`, `top_p`,
`seed`, `stop`, multi-part `content`, `tools` and `response_format`
(refused with a 400 naming the field), an unknown model (404
`model_not_found`) and `models.retrieve`. What reaches the nodes is checked
by the caller, which owns the fake node. Prints one JSON line with the run
ids it made; exits non-zero on any mismatch.
"""

import json
import sys

import openai
from openai import OpenAI


def ask(client, model, **kw):
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is 2 + 3?"}],
        **kw,
    )


def streamed(client, model, **kw):
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "What is 2 + 3?"}],
            stream=True,
            **kw,
        )
    )
    text = "".join(
        c.choices[0].delta.content or ""
        for c in chunks
        if c.choices and c.choices[0].index == 0
    )
    return chunks, text


def refused(call, param):
    try:
        call()
    except openai.BadRequestError as e:
        assert e.status_code == 400, e
        assert e.body["param"] == param, e.body
        return e.body["message"]
    raise AssertionError(f"{param}: not refused")


def main() -> None:
    base, teams = sys.argv[1], sys.argv[2:]
    client = OpenAI(base_url=base, api_key="unused-on-loopback", max_retries=0)
    runs = {}

    listed = sorted(m.id for m in client.models.list())
    assert listed == sorted(teams), (listed, teams)
    for team in teams:
        m = client.models.retrieve(team)
        assert m.id == team and m.object == "model", m

        reply = ask(client, team)
        message = reply.choices[0].message
        assert reply.model == team, reply
        assert message.role == "assistant"
        extra = reply.model_extra["conclave"]
        assert extra["stop"]["stop"] == "decided", extra
        assert message.content and message.content.strip(), reply
        assert reply.usage.total_tokens > 0, reply
        runs[team] = [extra["run_id"]]

        # Another run: on a sampling team its answer may differ.
        chunks, text = streamed(client, team)
        assert text.strip(), chunks
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert all(c.usage is None for c in chunks), "usage without include_usage"
        runs[team].append(chunks[-1].model_extra["conclave"]["run_id"])

        chunks, text = streamed(client, team, stream_options={"include_usage": True})
        assert text.strip(), chunks
        assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0, chunks[-1]
        assert all(c.usage is None for c in chunks[:-1])

    team = teams[0]
    # Sampling fields: the caller checks what the node was sent.
    reply = ask(
        client,
        team,
        temperature=0.25,
        top_p=0.5,
        max_tokens=5,
        stop=["END", "###"],
        seed=7,
        user="someone",
    )
    runs["sampled"] = reply.model_extra["conclave"]["run_id"]

    # n: the team's answer first, then the other answers its ballots gave.
    reply = ask(client, team, n=3)
    assert 1 <= len(reply.choices) <= 3, reply
    assert [c.index for c in reply.choices] == list(range(len(reply.choices)))
    answers = [c.message.content for c in reply.choices]
    assert len(set(answers)) == len(answers), answers

    # Multi-part content: the text parts, joined.
    reply = client.chat.completions.create(
        model=team,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is"},
                    {"type": "text", "text": "2 + 3?"},
                ],
            }
        ],
    )
    assert reply.choices[0].message.content, reply
    runs["parts"] = reply.model_extra["conclave"]["run_id"]

    tool = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}
    refused(lambda: ask(client, team, tools=[tool]), "tools")
    refused(lambda: ask(client, team, response_format={"type": "json_object"}), "response_format")
    refused(lambda: ask(client, team, n=9), "n")
    message = refused(
        lambda: client.chat.completions.create(
            model=team,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    ],
                }
            ],
        ),
        "messages",
    )
    assert "image_url" in message, message

    try:
        ask(client, "no-such-team")
        raise AssertionError("an unknown model was answered")
    except openai.NotFoundError as e:
        assert e.status_code == 404 and e.body["code"] == "model_not_found", e.body
    try:
        client.models.retrieve("no-such-team")
        raise AssertionError("an unknown model was retrieved")
    except openai.NotFoundError as e:
        assert e.body["code"] == "model_not_found", e.body

    print(json.dumps(runs))


if __name__ == "__main__":
    main()
