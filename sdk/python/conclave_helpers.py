"""Helpers for Conclave plugins written in Python: what the Rust SDK's
`answer`, `prompt` and `vote` modules give, in plain Python with no imports
beyond the standard library, so they work inside a componentize-py component
and in ordinary unit tests alike.

They agree with the Rust SDK case for case: `sdk/cases/helpers.json` in the
Conclave repository holds the cases, and the Rust, Python and JavaScript
tests all run over that one file.

- `extract(text, kind)`: the final answer of `kind` ("number", "choice" or
  "text") in model text, normalised, or None.
- `normalize(answer, kind)`, `same(a, b, kind)`, `normalize_number(raw)`,
  `normalize_text(s)`: comparing answers.
- `answer_format(kind)`, `solve(question, kind)`, `revise(question, kind,
  feedback)`, `with_choices(question, choices)`: prompts, as (role, content)
  pairs.
- `Vote`, `Count`, `tally(votes)`, `borda(rankings)`, `meets_share(votes,
  total, share)`, `leader_posterior(leader, runner_up)`,
  `samples_to_reach(leader, runner_up, threshold, left)`, `decide(counts,
  total, empty)`: the arithmetic of voting.
"""

import math
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

__all__ = [
    "extract", "normalize", "same", "normalize_number", "normalize_text",
    "answer_format", "solve", "revise", "with_choices",
    "Vote", "Count", "Decided", "tally", "borda", "meets_share",
    "leader_posterior", "samples_to_reach", "decide",
]

# ---------------------------------------------------------------- answers

#: Markers after which models state their final answer, lower-case, most
#: specific first.
MARKERS = ("final answer:", "final answer is", "answer:", "the answer is", "answer is", "####")

_U128 = 1 << 128

#: Rust's `char::is_whitespace` (the White_Space property), which `trim` and
#: `split_whitespace` use; Python's own `strip()` and `split()` also count
#: U+001C..U+001F.
_WS = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
_WS_RUN = re.compile("[" + _WS + "]+")


def _trim(s: str) -> str:
    return s.strip(_WS)


def _ascii_lower(s: str) -> str:
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in s)


def _is_digit(c: Optional[str]) -> bool:
    return c is not None and "0" <= c <= "9"


def _is_alnum(c: str) -> bool:
    return c.isalnum()


def _lines(text: str) -> List[str]:
    """Rust's `str::lines`: split on \\n, drop a \\r before it."""
    pieces = text.split("\n")
    last = pieces.pop()
    out = [p[:-1] if p.endswith("\r") else p for p in pieces]
    if last:
        out.append(last)
    return out


def _parse_u128(s: str) -> Optional[int]:
    """Rust's `u128::from_str`: an optional '+', then ASCII digits."""
    body = s[1:] if s.startswith("+") else s
    if not body or not all(_is_digit(c) for c in body):
        return None
    n = int(body)
    return n if n < _U128 else None


def extract(text: str, kind: str) -> Optional[str]:
    """The final answer of `kind` in model `text`, normalised; None when there
    is nothing of that kind, so that a verifier can fail the candidate."""
    if kind == "number":
        return _extract_number(text)
    if kind == "choice":
        return _extract_choice(text, "Z")
    if kind == "text":
        return _extract_text(text)
    raise ValueError(f"unknown answer kind {kind!r}: use number, choice or text")


def normalize(answer: str, kind: str) -> str:
    """Normalises an isolated answer (a gold label, say) so that it compares
    equal to what `extract` returns for the same value."""
    if kind == "number":
        n = normalize_number(_trim(answer))
        return n if n is not None else normalize_text(answer)
    if kind == "choice":
        c = _extract_choice(answer, "Z")
        return c if c is not None else normalize_text(answer)
    if kind == "text":
        return normalize_text(answer)
    raise ValueError(f"unknown answer kind {kind!r}: use number, choice or text")


def same(a: str, b: str, kind: str) -> bool:
    """Whether two answers of `kind` mean the same after normalisation."""
    return normalize(a, kind) == normalize(b, kind)


def _marked_span(text: str) -> Optional[str]:
    pos = text.rfind("\\boxed{")
    if pos >= 0:
        start = pos + len("\\boxed{")
        depth = 1
        for i in range(start, len(text)):
            c = text[i]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i]
    lower = _ascii_lower(text)
    for marker in MARKERS:
        pos = lower.rfind(marker)
        if pos >= 0:
            rest = text[pos + len(marker):].lstrip(" \t:*")
            line = next((l for l in _lines(rest) if _trim(l)), "")
            if _trim(line):
                return line
    return None


def _numbers_in(text: str) -> List[str]:
    chars = text
    n = len(chars)
    out = []
    i = 0
    while i < n:
        c = chars[i]
        starts_signed = (
            c in "-+\u2212"
            and _is_digit(chars[i + 1] if i + 1 < n else None)
            and (i == 0 or not (chars[i - 1].isascii() and chars[i - 1].isalnum()))
        )
        if not (_is_digit(c) or starts_signed):
            i += 1
            continue
        s = ""
        if starts_signed:
            if c != "+":
                s += "-"
            i += 1
        seen_point = seen_slash = False
        while i < n:
            c = chars[i]
            next_digit = _is_digit(chars[i + 1] if i + 1 < n else None)
            if _is_digit(c):
                s += c
            elif c == "," and next_digit and not seen_point and not seen_slash:
                group = 0
                j = i + 1
                while j < n and _is_digit(chars[j]):
                    group += 1
                    j += 1
                if group != 3:
                    break
            elif c == "." and next_digit and not seen_point and not seen_slash:
                seen_point = True
                s += "."
            elif c == "/" and next_digit and not seen_point and not seen_slash:
                seen_slash = True
                s += "/"
            else:
                break
            i += 1
        out.append(s)
    return out


def _extract_number(text: str) -> Optional[str]:
    span = _marked_span(text)
    if span is not None:
        found = _numbers_in(span)
        if found:
            return normalize_number(found[0])
    found = _numbers_in(text)
    return normalize_number(found[-1]) if found else None


def normalize_number(raw: str) -> Optional[str]:
    """Canonical spelling of a number: no sign for zero, no '+', no
    separators, no trailing zeros, fractions reduced and written as decimals
    when they terminate ('3/4' -> '0.75', '1/3' stays '1/3'). None when `raw`
    is not a number."""
    cleaned = "".join(
        "-" if c == "\u2212" else c
        for c in _trim(raw).rstrip(".")
        if c not in ", $\u00a3\u20ac"
    )
    if cleaned.startswith("-"):
        negative, body = True, cleaned[1:]
    else:
        negative, body = False, cleaned[1:] if cleaned.startswith("+") else cleaned
    if not body:
        return None
    if "/" in body:
        n, d = body.split("/", 1)
        num, den = _parse_u128(n), _parse_u128(d)
        if num is None or den is None or den == 0:
            return None
    elif "." in body:
        whole, frac = body.split(".", 1)
        if not all(_is_digit(c) for c in whole) or not all(_is_digit(c) for c in frac):
            return None
        frac = frac.rstrip("0")
        digits = whole + frac
        num = _parse_u128(digits) if digits else 0
        if num is None or 10 ** len(frac) >= _U128:
            return None
        den = 10 ** len(frac)
    else:
        if not all(_is_digit(c) for c in body):
            return None
        num, den = _parse_u128(body), 1
        if num is None:
            return None
    g = max(math.gcd(num, den), 1)
    num, den = num // g, den // g
    sign = "-" if negative and num != 0 else ""
    if den == 1:
        return f"{sign}{num}"
    rest, twos, fives = den, 0, 0
    while rest % 2 == 0:
        rest //= 2
        twos += 1
    while rest % 5 == 0:
        rest //= 5
        fives += 1
    if rest != 1:
        return f"{sign}{num}/{den}"
    places = max(twos, fives)
    scale = 10 ** places
    scaled = num * (scale // den)
    if scale >= _U128 or scaled >= _U128:
        return None
    whole = scaled // scale
    frac = f"{scaled % scale:0{places}d}".rstrip("0")
    return f"{sign}{whole}.{frac}"


def _standalone(s: str, last: str) -> List[str]:
    found = []
    n = len(s)
    for i, c in enumerate(s):
        if not ("A" <= c <= "Z" and c <= last):
            continue
        before_ok = i == 0 or not _is_alnum(s[i - 1])
        after_ok = i + 1 == n or not _is_alnum(s[i + 1])
        article = c == "A" and i + 2 < n and s[i + 1] == " " and s[i + 2].islower()
        if before_ok and after_ok and not article:
            found.append(c)
    return found


def _extract_choice(text: str, last: str) -> Optional[str]:
    span = _marked_span(text)
    if span is not None:
        found = _standalone(span, last)
        if found:
            return found[0]
    lower = _ascii_lower(text)
    for phrase in ("option", "choice"):
        pos = lower.rfind(phrase)
        if pos >= 0:
            found = _standalone(text[pos + len(phrase):], last)
            if found:
                return found[0]
    trimmed = _trim(text)
    if len(trimmed) <= 4:
        found = _standalone(trimmed, last)
        if found:
            return found[0]
    found = _standalone(text, last)
    return found[-1] if found else None


def _extract_text(text: str) -> Optional[str]:
    span = _marked_span(text)
    if span is None:
        span = next((l for l in reversed(_lines(text)) if _trim(l)), None)
    if span is None:
        return None
    n = normalize_text(span)
    return n or None


def normalize_text(s: str) -> str:
    """Lower-case, single spaces, no surrounding quotes, markup or final period."""
    words = [w for w in _WS_RUN.split(s) if w]
    return _trim(" ".join(words).lower().strip("\"'*` ").rstrip(".!"))


# ---------------------------------------------------------------- prompts

def answer_format(kind: str) -> str:
    """The instruction that makes a model finish with a parseable answer line."""
    what = {
        "number": "containing only the number, without units.",
        "choice": "containing only the letter of the correct choice.",
        "text": "containing only the short final answer.",
    }
    slot = {"number": "<number>", "choice": "<letter>", "text": "<answer>"}
    if kind not in what:
        raise ValueError(f"unknown answer kind {kind!r}: use number, choice or text")
    return (
        f"Reason step by step, then end with a line of the form `Answer: {slot[kind]}` "
        + what[kind]
    )


def solve(question: str, kind: str) -> List[Tuple[str, str]]:
    """A system and a user message asking to solve `question`."""
    return [
        ("system", f"You are a careful problem solver. {answer_format(kind)}"),
        ("user", question),
    ]


def revise(question: str, kind: str, feedback: Sequence[str]) -> List[Tuple[str, str]]:
    """Messages asking to solve `question` again in the light of `feedback`."""
    msgs = solve(question, kind)
    if feedback:
        note = (
            "Other participants and reviewers said the following. Use what is right, "
            "reject what is wrong, and give your own final answer.\n"
        )
        for i, f in enumerate(feedback):
            note += f"\n[{i + 1}] {_trim(f)}\n"
        msgs.append(("user", note))
    return msgs


def with_choices(question: str, choices: Sequence[str]) -> str:
    """Lists `choices` as 'A. ...' lines under `question`."""
    s = _trim(question) + "\n"
    for i, c in enumerate(choices):
        s += f"\n{chr(ord('A') + i % 26)}. {c}"
    return s


# ---------------------------------------------------------------- votes

@dataclass
class Vote:
    """One counted vote: a normalised answer, its weight (1 for a plain
    majority) and its verifier score in 0..1 (the first tie-break)."""
    answer: str
    weight: float = 1.0
    score: float = 1.0


@dataclass
class Count:
    """The total for one answer: `votes` ballots, the sum of their weights,
    their mean score."""
    answer: str
    votes: int
    weight: float
    score: float


@dataclass
class Decided:
    """A decided value, shaped like the WIT `decided` record."""
    answer: str
    support: int
    total: int
    runner_up: Optional[str]


def tally(votes: Sequence[Vote]) -> List[Count]:
    """Totals per answer, best first: by weight, then mean score, then answer
    text. Empty answers are not counted; the order of `votes` never matters."""
    ordered = sorted((v for v in votes if v.answer), key=lambda v: (v.answer, v.weight, v.score))
    by_answer = {}
    for v in ordered:
        e = by_answer.setdefault(v.answer, [0, 0.0, 0.0])
        e[0] += 1
        e[1] += v.weight
        e[2] += v.score
    counts = [Count(a, n, w, s / n) for a, (n, w, s) in sorted(by_answer.items())]
    counts.sort(key=lambda c: c.answer)
    counts.sort(key=lambda c: (-c.weight, -c.score))
    return counts


def borda(rankings: Sequence[Sequence[str]]) -> List[Count]:
    """Borda count: with m distinct answers, rank r (from 0) of a ballot earns
    m - 1 - r points. `votes` of each result is how many ballots ranked it
    first. Best first, ties by first-place votes, then answer text."""
    distinct = sorted({a for r in rankings for a in r if a})
    m = float(len(distinct))
    points = {a: [0, 0.0] for a in distinct}
    for ranking in rankings:
        seen = []
        rank = 0.0
        for answer in ranking:
            if not answer or answer in seen:
                continue
            seen.append(answer)
            e = points[answer]
            if rank == 0.0:
                e[0] += 1
            e[1] += m - 1.0 - rank
            rank += 1.0
    counts = [Count(a, first, pts, 0.0) for a, (first, pts) in points.items()]
    counts.sort(key=lambda c: c.answer)
    counts.sort(key=lambda c: (-c.weight, -c.votes))
    return counts


def meets_share(votes: int, total: int, share: float) -> bool:
    """Whether `votes` agreeing out of `total` meet a quorum of `share`
    (0..1], in exact integer arithmetic at a resolution of 1e-6."""
    if total == 0:
        return False
    need = math.floor(min(max(share, 0.0), 1.0) * 1_000_000.0 + 0.5)
    return votes * 1_000_000 >= need * total


def leader_posterior(leader: int, runner_up: int) -> float:
    """P(x > 1/2) for x ~ Beta(leader + 1, runner_up + 1): the probability,
    under a uniform prior, that the leading answer really is more likely than
    the runner-up (Adaptive-Consistency's stopping criterion)."""
    n = leader + runner_up + 1
    ln_half_n = n * 0.6931471805599453  # std::f64::consts::LN_2
    ln_c = 0.0
    total = 0.0
    for k in range(leader + 1):
        if k > 0:
            ln_c += math.log(float(n - k + 1)) - math.log(float(k))
        total += math.exp(ln_c - ln_half_n)
    return min(total, 1.0)


def samples_to_reach(leader: int, runner_up: int, threshold: float, left: int) -> int:
    """The fewest extra samples that, all agreeing with the leader, would lift
    `leader_posterior` to `threshold`; at most `left`."""
    extra = 1
    while extra < left and leader_posterior(leader + extra, runner_up) < threshold:
        extra += 1
    return min(extra, max(left, 1))


def decide(counts: Sequence[Count], total: int, empty: str = "no ballot had a countable answer"):
    """The decision for `counts` (best first, as `tally` returns them) over
    `total` counted ballots: ("decided", Decided) with the best answer and the
    second as runner-up, or ("no-consensus", empty) when nothing was counted."""
    if not counts:
        return ("no-consensus", empty)
    best = counts[0]
    return (
        "decided",
        Decided(best.answer, best.votes, total, counts[1].answer if len(counts) > 1 else None),
    )
