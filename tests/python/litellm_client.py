"""Drive `conclave serve` through LiteLLM's SDK, as an OpenAI-compatible
provider.

Usage: python3 tests/python/litellm_client.py BASE_URL TEAM...

Each TEAM is asked plainly and streamed through `litellm.completion` with
the `openai/` provider prefix and `api_base` pointed at the server, as a
LiteLLM user would configure any OpenAI-compatible endpoint. Exits
non-zero on any mismatch.
"""

import os
import sys

# No network: LiteLLM must not fetch its model price map.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm  # noqa: E402


def main() -> None:
    base, teams = sys.argv[1], sys.argv[2:]
    for team in teams:
        kw = dict(
            model=f"openai/{team}",
            api_base=base,
            api_key="unused-on-loopback",
            messages=[{"role": "user", "content": "What is 2 + 3?"}],
            num_retries=0,
        )
        reply = litellm.completion(**kw)
        answer = reply.choices[0].message.content
        assert answer and answer.strip(), reply
        assert reply.usage.total_tokens > 0, reply

        parts = []
        for chunk in litellm.completion(stream=True, **kw):
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
        # Another run: on a sampling team its answer may differ.
        assert "".join(parts).strip(), parts

        try:
            litellm.completion(**{**kw, "model": "openai/no-such-team"})
            raise AssertionError("an unknown model was answered")
        except litellm.NotFoundError:
            pass
        print(f"litellm: {team} answered {answer!r} plainly and streamed")


if __name__ == "__main__":
    main()
