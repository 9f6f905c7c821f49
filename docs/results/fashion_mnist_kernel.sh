#!/usr/bin/env bash
# The minimum-norm kernel solves of docs/results/fashion-mnist.md: all 60,000 training images,
# float32, on this machine's CPU; each writes results/kernel/<name>.json (+ .out, .err with
# /usr/bin/time -v's measured peak); a solve whose JSON exists is not redone. About 15-30 minutes per
# RBF solve on 2 cores (K alone is 13.4 GiB). `--also-levels 1.0` would answer random labels from the
# true-label run's factorization; the runs here are separate, one result per file.
set -u
cd "$(dirname "$0")/../.."
mkdir -p results/kernel
run() {
  name=$1; shift
  if [ -s results/kernel/$name.json ]; then echo "== $name: done before (results/kernel/$name.json)"; return; fi
  echo "== $name $(date -u +%FT%TZ)"
  /usr/bin/time -v .venv/bin/rethink-dist kernel --dataset fashion_mnist --dtype float32 --memory-gb 16 "$@" \
      --json results/kernel/$name.json > results/kernel/$name.out 2> results/kernel/$name.err
  echo "rc=$? $(date -u +%FT%TZ)"; grep -E "Maximum resident|Elapsed" results/kernel/$name.err
}
run rbf-true --kernel rbf
run rbf-random --kernel rbf --corruption labels --level 1.0
run linear-true --kernel linear
run linear-random --kernel linear --corruption labels --level 1.0
