"""Drive `conclave serve` with the official OpenAI Python client.

Usage: python3 tests/python/openai_client.py BASE_URL MODEL

Asks once plainly and once streamed, and checks what any OpenAI client
would rely on, plus the `conclave` object. Exits non-zero on any mismatch.
"""

import sys

from openai import OpenAI


def main() -> None:
    base, model = sys.argv[1], sys.argv[2]
    client = OpenAI(base_url=base, api_key="unused-on-loopback")

    models = [m.id for m in client.models.list()]
    assert models == [model], models

    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is 6 * 7?"}],
    )
    message = reply.choices[0].message
    answer = message.content
    assert message.role == "assistant"
    assert reply.usage is not None and reply.usage.total_tokens > 0, reply
    extra = reply.model_extra["conclave"]
    assert extra["stop"]["stop"] in ("decided", "no-consensus"), extra
    assert extra["run_id"].startswith("run-"), extra
    if extra["stop"]["stop"] == "decided":
        assert answer is not None and answer.strip() != "", reply
    else:
        # No consensus: no content, and a refusal that says why.
        assert answer is None and message.refusal.startswith("no consensus"), reply

    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is 6 * 7?"}],
        stream=True,
    )
    parts, refusal, finish, last = [], None, None, None
    for chunk in stream:
        last = chunk
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
        if chunk.choices and chunk.choices[0].delta.refusal:
            refusal = chunk.choices[0].delta.refusal
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert finish == "stop", finish
    assert "".join(parts).strip() != "" or refusal.startswith("no consensus"), parts
    assert last is not None and last.model_extra["conclave"]["run_id"].startswith("run-")
    print(f"openai client: plain answer {answer!r}, streamed answer {''.join(parts)!r}")


if __name__ == "__main__":
    main()
