#!/usr/bin/env bash
# The minimum-norm kernel solves of docs/results/fashion-mnist.md, on this machine's CPU; each writes
# results/kernel/<name>.json, its stdout to <name>.out and its stderr (with /usr/bin/time -v's measured
# peak) to <name>.err. A solve whose JSON exists is not redone; a failed one keeps its .err (a rerun
# moves it to .err.1). Two chains run side by side: the full-size solve (K alone is 13.4 GiB in
# float32; 25-45 minutes on 2 cores) and the smaller ones.
#
# Why these: in float32 the RBF K of Fashion-MNIST is singular by numpy's lstsq cut-off
# (n * eps * max K = 0.0072 at n = 60,000), and the minimum-norm fallback (an eigendecomposition)
# needs 3 n^2 floats = 40 GiB; float64 at n = 60,000 needs 27 GiB for K alone, more than this
# machine has. So: a small ridge at full size (true and random labels from one factorization),
# and float32 against float64 without a ridge at n = 10,000 (float64 at 20,000 took 38 minutes here).
set -u
cd "$(dirname "$0")/../.."
mkdir -p results/kernel
run() {
  name=$1; shift
  if [ -s results/kernel/$name.json ]; then echo "== $name: done before (results/kernel/$name.json)"; return; fi
  [ -e results/kernel/$name.err ] && mv results/kernel/$name.err results/kernel/$name.err.1
  echo "== $name $(date -u +%FT%TZ)"
  /usr/bin/time -v .venv/bin/rethink-dist kernel --dataset fashion_mnist "$@" \
      --json results/kernel/$name.json > results/kernel/$name.out 2> results/kernel/$name.err
  echo "rc=$? $(date -u +%FT%TZ)"; grep -E "Maximum resident|Elapsed" results/kernel/$name.err
}
full() {
  run rbf-ridge --kernel rbf --dtype float32 --ridge 0.01 --also-levels 1.0 --memory-gb 16
}
small() {
  # --memory-gb 1: a singular K is reported at once instead of falling back to an eigendecomposition.
  run rbf-f32-10k --kernel rbf --dtype float32 --max-train 10000 --memory-gb 1
  run rbf-f64-10k --kernel rbf --dtype float64 --max-train 10000 --also-levels 1.0 --memory-gb 4
  run linear --kernel linear --dtype float32 --also-levels 1.0
  # float32's cut-off (n * eps * the largest eigenvalue) keeps only the directions within 0.7% of the
  # top one (pixels are all positive: the mean image dominates); float64 keeps them all.
  run linear-f64 --kernel linear --dtype float64 --also-levels 1.0
}
full > results/kernel/full.log 2>&1 &
small > results/kernel/small.log 2>&1
wait
cat results/kernel/full.log results/kernel/small.log
