#!/usr/bin/env python3
"""Validate the knowledge question sets against the document corpus.

Reads only files under the directory containing this script
(questions_dev.jsonl, questions_test.jsonl, docs/**). Exits non-zero on error.

Checks:
  * every line is JSON with exactly the expected fields;
  * ids are unique across both splits and look like kb-NNN;
  * answerable items: source exists under docs/, quote is an exact substring
    of the source file, 20 <= len(quote) <= 300, and the answer or one alias
    occurs in the quote (case-insensitive);
  * unanswerable items: abstain is true and answer/source/quote are empty,
    aliases is an empty list;
  * corpus size is between 300 KB and 2 MB (LICENSE-NOTE.md files excluded);
  * each split has roughly 10% unanswerable items.
"""
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(HERE, "docs")
SPLITS = ["questions_dev.jsonl", "questions_test.jsonl"]
FIELDS = {"id", "question", "answer", "aliases", "source", "quote"}


def main():
    errors = []
    cache = {}
    ids = set()
    summary = {}
    for split in SPLITS:
        path = os.path.join(HERE, split)
        n_ans = n_un = 0
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                where = f"{split}:{lineno}"
                if not line.strip():
                    errors.append(f"{where}: blank line")
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as e:
                    errors.append(f"{where}: bad JSON: {e}")
                    continue
                keys = set(item)
                abstain = item.get("abstain", False)
                expected = FIELDS | ({"abstain"} if "abstain" in item else set())
                if keys != expected:
                    errors.append(f"{where}: fields {sorted(keys)}")
                iid = item.get("id", "")
                if not re.fullmatch(r"kb-\d{3,}", iid):
                    errors.append(f"{where}: bad id {iid!r}")
                if iid in ids:
                    errors.append(f"{where}: duplicate id {iid}")
                ids.add(iid)
                if not item.get("question", "").strip():
                    errors.append(f"{where}: empty question")
                if not isinstance(item.get("aliases"), list):
                    errors.append(f"{where}: aliases not a list")
                    continue
                if abstain is True:
                    n_un += 1
                    if item["answer"] or item["source"] or item["quote"] or item["aliases"]:
                        errors.append(f"{where}: unanswerable item must have empty answer/aliases/source/quote")
                    continue
                if "abstain" in item:
                    errors.append(f"{where}: abstain present but not true")
                n_ans += 1
                src = item["source"]
                fpath = os.path.normpath(os.path.join(HERE, src))
                if not src.startswith("docs/") or not fpath.startswith(DOCS + os.sep) or not os.path.isfile(fpath):
                    errors.append(f"{where}: source not found under docs/: {src}")
                    continue
                if fpath not in cache:
                    with open(fpath, encoding="utf-8") as g:
                        cache[fpath] = g.read()
                text = cache[fpath]
                quote = item["quote"]
                if not 20 <= len(quote) <= 300:
                    errors.append(f"{where}: quote length {len(quote)}")
                if quote not in text:
                    errors.append(f"{where}: quote is not an exact substring of {src}")
                if not item["answer"]:
                    errors.append(f"{where}: empty answer on answerable item")
                cands = [item["answer"]] + list(item["aliases"])
                if not any(c and c.lower() in quote.lower() for c in cands):
                    errors.append(f"{where}: neither answer nor any alias occurs in quote")
        summary[split] = (n_ans, n_un)
        total = n_ans + n_un
        if total and not 0.07 <= n_un / total <= 0.15:
            errors.append(f"{split}: unanswerable share {n_un}/{total} is far from 10%")

    size = 0
    nfiles = 0
    for root, _, files in os.walk(DOCS):
        for name in files:
            if name.endswith(".md") and name != "LICENSE-NOTE.md":
                size += os.path.getsize(os.path.join(root, name))
                nfiles += 1
    if not 300_000 <= size <= 2_000_000:
        errors.append(f"corpus size {size} bytes outside 300 KB .. 2 MB")

    for split, (a, u) in summary.items():
        print(f"{split}: {a + u} items ({a} answerable, {u} unanswerable)")
    print(f"corpus: {nfiles} documents, {size} bytes (LICENSE-NOTE.md excluded)")
    if errors:
        for e in errors:
            print("ERROR", e)
        print(f"{len(errors)} error(s)")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
