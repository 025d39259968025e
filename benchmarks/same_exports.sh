#!/usr/bin/env bash
# Exports of a sample of zoo models/variants, compared byte for byte with those of another commit
# (issue 19: a refactor must not change what is exported). Usage: benchmarks/same_exports.sh BASE_COMMIT
# Writes into $TMPDIR/same-exports; needs the checkout's .venv. Exit 1 when any file differs.
set -euo pipefail
base=${1:?usage: same_exports.sh BASE_COMMIT}
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$repo/.venv/bin/python}
work=${TMPDIR:-/tmp}/same-exports
rm -rf "$work" && mkdir -p "$work"
mkdir -p "$work/base" "$work/head"
git -C "$repo" worktree add -q --detach "$work/src" "$base"
trap 'git -C "$repo" worktree remove --force "$work/src"' EXIT
samples=("segformer-b0 hq-pa" "deit-t tome" "segmenter-vit-t algm" "segformer-b0 fast --merge-ops native"
         "vit-t dtem --precision fp16")
status=0
for spec in "${samples[@]}"; do
  set -- $spec; model=$1; variant=$2; shift 2
  name="$model-$variant$(echo "$@" | tr -d ' -')"
  for side in base head; do
    src=$([ $side = base ] && echo "$work/src" || echo "$repo")
    (cd "$src" && PYTHONPATH="$src" "$py" -m edgemerge.cli export -m "$model" -v "$variant" "$@" -o "$work/$side/$name" >/dev/null 2>&1)
  done
  for f in model.onnx manifest.json reference.npz build_on_device.sh; do
    if cmp -s "$work/base/$name/$f" "$work/head/$name/$f"; then echo "same  $name/$f"; else echo "DIFF  $name/$f"; status=1; fi
  done
done
exit $status
