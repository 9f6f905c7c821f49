#!/usr/bin/env bash
# The kernel solves of docs/results/fashion-mnist.md, on this machine's CPU; each writes
# results/kernel/<name>.json, its stdout to <name>.out and its stderr (with /usr/bin/time -v's measured
# peak) to <name>.err. A solve whose JSON exists is not redone; a failed one keeps its .err (a rerun
# moves it to .err.1).
#
# - rbf-60k: the unregularized RBF interpolant of all 60,000 training images (true labels) by the
#   interpolation solver (float32 Gram matrix, Cholesky of K + shift I as the preconditioner of
#   conjugate gradients with float64 residuals); K alone is 13.4 GiB. Its JSON times each step, the
#   factorization (one float32 LAPACK Cholesky) among them.
# - bench-60k (`bash docs/results/fashion_mnist_kernel.sh bench`, last): the same solve beside one
#   plain float32 torch Cholesky of the same matrix, each in its own process (bench/kernel.py).
# - rand-*: the kernel's randomization test at n = RAND_N (default 10,000) training images, every
#   label-corruption level from one factorization (--also-levels), and each pixel corruption (which
#   changes K: one solve each), for the RBF and the Laplacian kernel.
# - rand60k (`bash docs/results/fashion_mnist_kernel.sh rand60k`): every label-corruption level of the
#   randomization test on all 60,000 training images, from one factorization per kernel (RBF, Laplacian).
# - rand60k-pixels (`bash docs/results/fashion_mnist_kernel.sh rand60k-pixels`): each pixel corruption on
#   all 60,000 training images, for each kernel (a new K each: six solves of the rbf-60k's size).
# - linear: the linear kernel (rank 784 < n: least squares from the SVD of the features; not an
#   interpolant, so the command exits 3 and says so).
# The full-size solve runs alone (its memory); the small ones after it.
set -u
cd "$(dirname "$0")/../.."
mkdir -p results/kernel
RAND_N=${RAND_N:-10000}
run() {
  name=$1; shift
  if [ -s results/kernel/$name.json ]; then echo "== $name: done before (results/kernel/$name.json)"; return; fi
  [ -e results/kernel/$name.err ] && mv results/kernel/$name.err results/kernel/$name.err.1
  echo "== $name $(date -u +%FT%TZ)"
  /usr/bin/time -v "$@" --json results/kernel/$name.json > results/kernel/$name.out 2> results/kernel/$name.err
  echo "rc=$? $(date -u +%FT%TZ)"; grep -E "Maximum resident|Elapsed" results/kernel/$name.err
}
kernel() { name=$1; shift; run $name .venv/bin/rethink-dist kernel --dataset fashion_mnist --dtype float32 "$@"; }
full() {
  kernel rbf-60k --kernel rbf --device cpu
}
bench() {
  run bench-60k .venv/bin/python bench/kernel.py --dataset fashion_mnist --sizes 60000 --interpolate
}
rand60k() {
  for k in rbf laplacian; do
    kernel rand-60k-$k-labels --kernel $k --device cpu --also-levels 0.2,0.4,0.6,0.8,1.0
  done
}
rand60k_pixels() {
  for k in rbf laplacian; do
    for c in shuffled_pixels random_pixels gaussian; do
      kernel rand-60k-$k-$c --kernel $k --device cpu --corruption $c
    done
  done
}
small() {
  for k in rbf laplacian; do
    kernel rand-$k-labels --kernel $k --max-train $RAND_N --also-levels 0.2,0.4,0.6,0.8,1.0
    for c in shuffled_pixels random_pixels gaussian; do
      kernel rand-$k-$c --kernel $k --max-train $RAND_N --corruption $c
    done
  done
  kernel linear --kernel linear --also-levels 1.0
}
case "${1:-all}" in
  full) full ;;
  small) small ;;
  bench) bench ;;
  rand60k) rand60k ;;
  rand60k-pixels) rand60k_pixels ;;
  all) full; small; bench; rand60k; rand60k_pixels ;;
  *) echo "usage: $0 [all | full | small | bench | rand60k | rand60k-pixels]" >&2; exit 2 ;;
esac
