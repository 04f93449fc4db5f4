#!/usr/bin/env bash
# Before/after timing of the speed benchmarks in one run: each round alternates two checkouts.
#   git worktree add /tmp/before <rev>
#   benchmarks/before_after.sh /tmp/before . > out.jsonl
#   python benchmarks/before_after_table.py out.jsonl
# Each output line is a benchmark's JSON object (DESIGN.md section 8) with "tree" and "round".
set -euo pipefail
BEFORE=$(cd "$1" && pwd); AFTER=$(cd "$2" && pwd); ROUNDS=${ROUNDS:-3}
PY=${PYTHON:-python}
tag() { sed "s/^{/{\"tree\": \"$1\", \"round\": $2, /"; }
for round in $(seq "$ROUNDS"); do
  for tree in before after; do
    dir=$BEFORE; [ "$tree" = after ] && dir=$AFTER
    cd "$dir"
    PYTHONPATH=. $PY benchmarks/hmm_speed.py --configs A1,A2 --peers none --impls mmpgm,mmpgm_ops \
      --repeats 7 2>/dev/null | grep '^{' | tag $tree $round
    PYTHONPATH=. $PY benchmarks/lds_speed.py --configs B,L --reps 7 --impls \
      mmpgm,mmpgm_exact,mmpgm_sequential,mmpgm_parallel,mmpgm_masked,mmpgm_smooth \
      2>/dev/null | grep '^{' | tag $tree $round
    PYTHONPATH=. $PY benchmarks/lds_speed.py --configs B10k --impls mmpgm,mmpgm_smooth --reps 3 \
      2>/dev/null | grep '^{' | tag $tree $round
    PYTHONPATH=. $PY benchmarks/mvrnn_speed.py --impls mmpgm,mmpgm_no_pyro,torch_plain --repeats 7 \
      2>/dev/null | grep '^{' | tag $tree $round
  done
done
