// Helpers for Conclave plugins written in JavaScript: what the Rust SDK's
// `answer`, `prompt` and `vote` modules give, in plain JavaScript with no
// imports, so they work inside a componentize-js component and under
// `node --test` alike.
//
// They agree with the Rust SDK case for case: `sdk/cases/helpers.json` in
// the Conclave repository holds the cases, and the Rust, Python and
// JavaScript tests all run over that one file.
//
// - extract(text, kind): the final answer of `kind` ("number", "choice" or
//   "text") in model text, normalised, or null.
// - normalize(answer, kind), same(a, b, kind), normalizeNumber(raw),
//   normalizeText(s): comparing answers.
// - answerFormat(kind), solve(question, kind), revise(question, kind,
//   feedback), withChoices(question, choices): prompts, as [role, content]
//   pairs (chatMessages turns them into the WIT `message` records).
// - tally(votes), borda(rankings), meetsShare(votes, total, share),
//   leaderPosterior(leader, runnerUp), samplesToReach(leader, runnerUp,
//   threshold, left), decide(counts, total, empty): the arithmetic of
//   voting. A vote is {answer, weight, score}; a count is {answer, votes,
//   weight, score}; decide returns a WIT `decision` as jco represents it.

/** Markers after which models state their final answer, lower-case, most specific first. */
export const MARKERS = ["final answer:", "final answer is", "answer:", "the answer is", "answer is", "####"];

const U128 = 1n << 128n;
const KINDS = ["number", "choice", "text"];

function checkKind(kind) {
  if (!KINDS.includes(kind)) {
    throw new Error(`unknown answer kind ${JSON.stringify(kind)}: use number, choice or text`);
  }
}

const asciiLower = (s) => s.replace(/[A-Z]/g, (c) => c.toLowerCase());
const isDigit = (c) => c !== undefined && c >= "0" && c <= "9";
const isAsciiAlnum = (c) => c !== undefined && /^[A-Za-z0-9]$/.test(c);
const isAlnum = (c) => /^[\p{Alphabetic}\p{N}]$/u.test(c);
const isLower = (c) => c !== undefined && /^\p{Lowercase}$/u.test(c);
// Rust's `char::is_whitespace` (the White_Space property).
const WS = "\\t\\n\\v\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const trim = (s) => s.replace(new RegExp(`^[${WS}]+|[${WS}]+$`, "g"), "");
const splitWhitespace = (s) => s.split(new RegExp(`[${WS}]+`)).filter((w) => w !== "");

/** Strips any of `chars` from the start (`start`) and/or end (`end`) of `s`. */
function stripChars(s, chars, start, end) {
  let a = 0;
  let b = s.length;
  while (start && a < b && chars.includes(s[a])) a++;
  while (end && b > a && chars.includes(s[b - 1])) b--;
  return s.slice(a, b);
}

/** Rust's `str::lines`: split on \n, drop a \r before it. */
function lines(text) {
  const pieces = text.split("\n");
  const last = pieces.pop();
  const out = pieces.map((p) => (p.endsWith("\r") ? p.slice(0, -1) : p));
  if (last !== "") out.push(last);
  return out;
}

/** Rust's `u128::from_str`: an optional '+', then ASCII digits. */
function parseU128(s) {
  const body = s.startsWith("+") ? s.slice(1) : s;
  if (!/^[0-9]+$/.test(body)) return null;
  const n = BigInt(body);
  return n < U128 ? n : null;
}

/** Compares strings by Unicode code point, as Rust compares `str`. */
export function compareText(a, b) {
  const x = Array.from(a);
  const y = Array.from(b);
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = x[i].codePointAt(0) - y[i].codePointAt(0);
    if (d !== 0) return d < 0 ? -1 : 1;
  }
  return x.length === y.length ? 0 : x.length < y.length ? -1 : 1;
}

/**
 * The final answer of `kind` in model `text`, normalised; null when there is
 * nothing of that kind, so that a verifier can fail the candidate.
 */
export function extract(text, kind) {
  checkKind(kind);
  if (kind === "number") return extractNumber(text);
  if (kind === "choice") return extractChoice(text, "Z");
  return extractText(text);
}

/** Normalises an isolated answer (a gold label) to what `extract` returns for the same value. */
export function normalize(answer, kind) {
  checkKind(kind);
  if (kind === "number") return normalizeNumber(trim(answer)) ?? normalizeText(answer);
  if (kind === "choice") return extractChoice(answer, "Z") ?? normalizeText(answer);
  return normalizeText(answer);
}

/** Whether two answers of `kind` mean the same after normalisation. */
export function same(a, b, kind) {
  return normalize(a, kind) === normalize(b, kind);
}

function markedSpan(text) {
  const pos = text.lastIndexOf("\\boxed{");
  if (pos >= 0) {
    const start = pos + "\\boxed{".length;
    let depth = 1;
    for (let i = start; i < text.length; i++) {
      if (text[i] === "{") depth++;
      else if (text[i] === "}") {
        depth--;
        if (depth === 0) return text.slice(start, i);
      }
    }
  }
  const lower = asciiLower(text);
  for (const marker of MARKERS) {
    const p = lower.lastIndexOf(marker);
    if (p >= 0) {
      const rest = stripChars(text.slice(p + marker.length), " \t:*", true, false);
      const line = lines(rest).find((l) => trim(l) !== "") ?? "";
      if (trim(line) !== "") return line;
    }
  }
  return null;
}

function numbersIn(text) {
  const chars = Array.from(text);
  const out = [];
  let i = 0;
  while (i < chars.length) {
    let c = chars[i];
    const startsSigned =
      (c === "-" || c === "+" || c === "\u2212") &&
      isDigit(chars[i + 1]) &&
      (i === 0 || !isAsciiAlnum(chars[i - 1]));
    if (!(isDigit(c) || startsSigned)) {
      i++;
      continue;
    }
    let s = "";
    if (startsSigned) {
      if (c !== "+") s += "-";
      i++;
    }
    let seenPoint = false;
    let seenSlash = false;
    while (i < chars.length) {
      c = chars[i];
      const nextDigit = isDigit(chars[i + 1]);
      if (isDigit(c)) {
        s += c;
      } else if (c === "," && nextDigit && !seenPoint && !seenSlash) {
        let group = 0;
        for (let j = i + 1; j < chars.length && isDigit(chars[j]); j++) group++;
        if (group !== 3) break;
      } else if (c === "." && nextDigit && !seenPoint && !seenSlash) {
        seenPoint = true;
        s += ".";
      } else if (c === "/" && nextDigit && !seenPoint && !seenSlash) {
        seenSlash = true;
        s += "/";
      } else {
        break;
      }
      i++;
    }
    out.push(s);
  }
  return out;
}

function extractNumber(text) {
  const span = markedSpan(text);
  if (span !== null) {
    const found = numbersIn(span);
    if (found.length > 0) return normalizeNumber(found[0]);
  }
  const found = numbersIn(text);
  return found.length > 0 ? normalizeNumber(found[found.length - 1]) : null;
}

function gcd(a, b) {
  while (b !== 0n) [a, b] = [b, a % b];
  return a;
}

/**
 * Canonical spelling of a number: no sign for zero, no '+', no separators,
 * no trailing zeros, fractions reduced and written as decimals when they
 * terminate ('3/4' -> '0.75', '1/3' stays '1/3'). null when `raw` is not a
 * number.
 */
export function normalizeNumber(raw) {
  const cleaned = Array.from(stripChars(trim(raw), ".", false, true))
    .filter((c) => !", $\u00a3\u20ac".includes(c))
    .map((c) => (c === "\u2212" ? "-" : c))
    .join("");
  let negative = false;
  let body = cleaned;
  if (cleaned.startsWith("-")) {
    negative = true;
    body = cleaned.slice(1);
  } else if (cleaned.startsWith("+")) {
    body = cleaned.slice(1);
  }
  if (body === "") return null;
  let num;
  let den;
  const slash = body.indexOf("/");
  const point = body.indexOf(".");
  if (slash >= 0) {
    num = parseU128(body.slice(0, slash));
    den = parseU128(body.slice(slash + 1));
    if (num === null || den === null || den === 0n) return null;
  } else if (point >= 0) {
    const whole = body.slice(0, point);
    let frac = body.slice(point + 1);
    if (!/^[0-9]*$/.test(whole) || !/^[0-9]*$/.test(frac)) return null;
    frac = stripChars(frac, "0", false, true);
    const digits = whole + frac;
    num = digits === "" ? 0n : parseU128(digits);
    den = 10n ** BigInt(frac.length);
    if (num === null || den >= U128) return null;
  } else {
    if (!/^[0-9]+$/.test(body)) return null;
    num = parseU128(body);
    den = 1n;
    if (num === null) return null;
  }
  let g = gcd(num, den);
  if (g < 1n) g = 1n;
  num /= g;
  den /= g;
  const sign = negative && num !== 0n ? "-" : "";
  if (den === 1n) return `${sign}${num}`;
  let rest = den;
  let twos = 0;
  let fives = 0;
  while (rest % 2n === 0n) {
    rest /= 2n;
    twos++;
  }
  while (rest % 5n === 0n) {
    rest /= 5n;
    fives++;
  }
  if (rest !== 1n) return `${sign}${num}/${den}`;
  const places = Math.max(twos, fives);
  const scale = 10n ** BigInt(places);
  const scaled = num * (scale / den);
  if (scale >= U128 || scaled >= U128) return null;
  const frac = stripChars((scaled % scale).toString().padStart(places, "0"), "0", false, true);
  return `${sign}${scaled / scale}.${frac}`;
}

function standalone(s, last) {
  const chars = Array.from(s);
  const found = [];
  chars.forEach((c, i) => {
    if (!(c >= "A" && c <= "Z" && c <= last)) return;
    const beforeOk = i === 0 || !isAlnum(chars[i - 1]);
    const afterOk = i + 1 === chars.length || !isAlnum(chars[i + 1]);
    const article = c === "A" && chars[i + 1] === " " && isLower(chars[i + 2]);
    if (beforeOk && afterOk && !article) found.push(c);
  });
  return found;
}

function extractChoice(text, last) {
  const span = markedSpan(text);
  if (span !== null) {
    const found = standalone(span, last);
    if (found.length > 0) return found[0];
  }
  const lower = asciiLower(text);
  for (const phrase of ["option", "choice"]) {
    const pos = lower.lastIndexOf(phrase);
    if (pos >= 0) {
      const found = standalone(text.slice(pos + phrase.length), last);
      if (found.length > 0) return found[0];
    }
  }
  const trimmed = trim(text);
  if (Array.from(trimmed).length <= 4) {
    const found = standalone(trimmed, last);
    if (found.length > 0) return found[0];
  }
  const found = standalone(text, last);
  return found.length > 0 ? found[found.length - 1] : null;
}

function extractText(text) {
  let span = markedSpan(text);
  if (span === null) {
    span = lines(text).reverse().find((l) => trim(l) !== "") ?? null;
  }
  if (span === null) return null;
  const n = normalizeText(span);
  return n === "" ? null : n;
}

/** Lower-case, single spaces, no surrounding quotes, markup or final period. */
export function normalizeText(s) {
  const collapsed = splitWhitespace(s).join(" ").toLowerCase();
  return trim(stripChars(stripChars(collapsed, "\"'*` ", true, true), ".!", false, true));
}

// ------------------------------------------------------------------ prompts

/** The instruction that makes a model finish with a parseable answer line. */
export function answerFormat(kind) {
  checkKind(kind);
  const slot = { number: "<number>", choice: "<letter>", text: "<answer>" }[kind];
  const what = {
    number: "containing only the number, without units.",
    choice: "containing only the letter of the correct choice.",
    text: "containing only the short final answer.",
  }[kind];
  return `Reason step by step, then end with a line of the form \`Answer: ${slot}\` ${what}`;
}

/** A system and a user message asking to solve `question`, as [role, content] pairs. */
export function solve(question, kind) {
  return [
    ["system", `You are a careful problem solver. ${answerFormat(kind)}`],
    ["user", question],
  ];
}

/** Messages asking to solve `question` again in the light of `feedback`. */
export function revise(question, kind, feedback) {
  const msgs = solve(question, kind);
  if (feedback.length > 0) {
    let note =
      "Other participants and reviewers said the following. Use what is right, " +
      "reject what is wrong, and give your own final answer.\n";
    feedback.forEach((f, i) => {
      note += `\n[${i + 1}] ${trim(f)}\n`;
    });
    msgs.push(["user", note]);
  }
  return msgs;
}

/** Lists `choices` as 'A. ...' lines under `question`. */
export function withChoices(question, choices) {
  let s = `${trim(question)}\n`;
  choices.forEach((c, i) => {
    s += `\n${String.fromCharCode(65 + (i % 26))}. ${c}`;
  });
  return s;
}

/** [role, content] pairs as the WIT `message` records jco expects. */
export function chatMessages(pairs) {
  return pairs.map(([role, content]) => ({ role, content }));
}

// ------------------------------------------------------------------ votes

/**
 * Totals per answer, best first: by weight, then mean score, then answer
 * text. Empty answers are not counted; the order of `votes` never matters.
 * A vote is {answer, weight, score}; a count {answer, votes, weight, score}.
 */
export function tally(votes) {
  const sorted = votes
    .filter((v) => v.answer !== "")
    .slice()
    .sort((a, b) => compareText(a.answer, b.answer) || a.weight - b.weight || a.score - b.score);
  const byAnswer = new Map();
  for (const v of sorted) {
    const e = byAnswer.get(v.answer) ?? { answer: v.answer, votes: 0, weight: 0, score: 0 };
    e.votes += 1;
    e.weight += v.weight;
    e.score += v.score;
    byAnswer.set(v.answer, e);
  }
  const counts = [...byAnswer.values()].map((e) => ({ ...e, score: e.score / e.votes }));
  counts.sort((a, b) => b.weight - a.weight || b.score - a.score || compareText(a.answer, b.answer));
  return counts;
}

/**
 * Borda count: with m distinct answers, rank r (from 0) of a ballot earns
 * m - 1 - r points. `votes` of each result is how many ballots ranked it
 * first. Best first, ties by first-place votes, then answer text.
 */
export function borda(rankings) {
  const distinct = [...new Set(rankings.flat().filter((a) => a !== ""))].sort(compareText);
  const m = distinct.length;
  const points = new Map(distinct.map((a) => [a, { answer: a, votes: 0, weight: 0, score: 0 }]));
  for (const ranking of rankings) {
    const seen = new Set();
    let rank = 0;
    for (const answer of ranking) {
      if (answer === "" || seen.has(answer)) continue;
      seen.add(answer);
      const e = points.get(answer);
      if (rank === 0) e.votes += 1;
      e.weight += m - 1 - rank;
      rank += 1;
    }
  }
  const counts = [...points.values()];
  counts.sort((a, b) => b.weight - a.weight || b.votes - a.votes || compareText(a.answer, b.answer));
  return counts;
}

/** Whether `votes` agreeing out of `total` meet a quorum of `share` (0..1], exactly at 1e-6. */
export function meetsShare(votes, total, share) {
  if (total === 0) return false;
  const need = Math.round(Math.min(Math.max(share, 0), 1) * 1_000_000);
  return BigInt(votes) * 1_000_000n >= BigInt(need) * BigInt(total);
}

/**
 * P(x > 1/2) for x ~ Beta(leader + 1, runnerUp + 1): the probability, under a
 * uniform prior, that the leading answer really is more likely than the
 * runner-up (Adaptive-Consistency's stopping criterion).
 */
export function leaderPosterior(leader, runnerUp) {
  const n = leader + runnerUp + 1;
  const lnHalfN = n * Math.LN2;
  let lnC = 0;
  let sum = 0;
  for (let k = 0; k <= leader; k++) {
    if (k > 0) lnC += Math.log(n - k + 1) - Math.log(k);
    sum += Math.exp(lnC - lnHalfN);
  }
  return Math.min(sum, 1);
}

/** The fewest extra samples that, all agreeing, would lift `leaderPosterior` to `threshold`; at most `left`. */
export function samplesToReach(leader, runnerUp, threshold, left) {
  let extra = 1;
  while (extra < left && leaderPosterior(leader + extra, runnerUp) < threshold) extra++;
  return Math.min(extra, Math.max(left, 1));
}

/**
 * The WIT `decision` for `counts` (best first, as `tally` returns them) over
 * `total` counted ballots, as jco represents it: the best answer decided,
 * the second as runner-up; no consensus saying `empty` when nothing was
 * counted.
 */
export function decide(counts, total, empty = "no ballot had a countable answer") {
  if (counts.length === 0) return { tag: "no-consensus", val: empty };
  return {
    tag: "decided",
    val: {
      answer: counts[0].answer,
      support: counts[0].votes,
      total,
      runnerUp: counts.length > 1 ? counts[1].answer : undefined,
    },
  };
}
