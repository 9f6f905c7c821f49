"""Benchmark: the minimum-norm kernel solve (Gram matrix + Cholesky + solve) at n = 5k, 10k, 20k.

Data: random CIFAR-shaped vectors (n x 3072, uniform pixels / 255; CIFAR-10 cannot be downloaded
here; the flop count does not depend on the values), 10-class one-hot targets, Gaussian RBF
kernel, float32. Each n runs in a fresh process, so its peak resident memory (ru_maxrss) is its own;
each process first times a plain 4096 x 3072 x 4096 matrix product, so the GFLOP/s of the Gram
matrix (n^2 D flops: its lower triangle), of the Cholesky factorization (n^3 / 3) and of the
whole are compared with a matrix product measured on the same machine at the same moment.

``--dataset fashion_mnist`` uses the first n Fashion-MNIST training images (raw pixels / 255, D =
784) and their labels instead, and ``--interpolate`` then also runs, in a second fresh process
right after the first, the interpolation solver itself (``rethink-dist kernel``'s whole run:
shifted float32 Cholesky + conjugate gradients with float64 residuals, the train residual
recomputed from the features, the test predictions), so that its time and peak memory stand beside
one plain float32 Cholesky factorization of the same matrix (K + the solver's first shift
eps32 * lambda_max I, which factors where K alone may not) measured in the same bench run:

    .venv/bin/python bench/kernel.py --dataset fashion_mnist --sizes 60000 --interpolate --json b.json

    .venv/bin/python bench/kernel.py --json bench-kernel.json [--sizes 5000,10000,20000]
        [--dtype float32] [--device auto]

Prints the JSON; about 3 minutes on 2 CPU cores (the default sizes).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device):
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t


def interpolate_child(n: int, dataset: str, kernel: str) -> dict:
    """The kernel command's whole run on the first n images (its JSON, with this process's peak)."""
    from rethink_dist.theory import run_kernel

    t = time.perf_counter()
    res = run_kernel({"dataset": dataset, "kernel": kernel, "dtype": "float32", "max_train": n, "device": "cpu"})
    return {"n": n, "dataset": dataset, "wall_seconds": time.perf_counter() - t,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "result": res}


def child(n: int, dim: int, dtype_name: str, device_name: str, dataset: str = "random") -> dict:
    import torch

    from rethink_dist.theory import kernel as kn
    from rethink_dist.train import resolve_device

    device = resolve_device(device_name)
    dtype = kn.DTYPES[dtype_name]
    g = torch.Generator().manual_seed(0)
    # plain matrix product, same process, same moment
    A = torch.rand(4096, dim, generator=g).to(device, dtype)
    B = torch.rand(dim, 4096, generator=g).to(device, dtype)
    A @ B
    _, t_mm = _timed(lambda: A @ B, device)
    mm_gflops = 2 * 4096 * dim * 4096 / t_mm / 1e9
    del A, B
    if dataset == "random":
        F = (torch.randint(0, 256, (n, dim), generator=g, dtype=torch.uint8).to(device, dtype) / 255.0)
        Y = torch.nn.functional.one_hot(torch.randint(0, 10, (n,), generator=g), 10).to(device, dtype)
    else:
        from rethink_dist.data import load

        ds = load(dataset)
        F = kn.raw_features(ds.train_x[:n], dtype, device)
        Y = torch.nn.functional.one_hot(torch.from_numpy(ds.train_y[:n]), ds.num_classes).to(device, dtype)
        dim = F.shape[1]
    gamma = kn.default_gamma(F)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss0 = _current_rss()  # the data and the libraries; the high-water mark may be above it
    block = kn.plan_block(n, 0, dim, F.element_size(), 0.8 * kn.available_bytes(device))
    K, t_gram = _timed(lambda: kn.gram_lower(F, "rbf", gamma, block), device)
    shift = 0.0
    if dataset != "random":  # the interpolation solver's first shift, eps * lambda_max (not timed)
        kn.mirror_lower(K, block)
        shift = torch.finfo(dtype).eps * kn.lambda_max_bound(K, K.diagonal().double(), block)
        K.diagonal().add_(shift)

    def torch_cholesky():  # torch.linalg.cholesky itself, in place on the column-major view
        info = torch.empty((), dtype=torch.int32, device=K.device)
        torch.linalg.cholesky_ex(K.mT, upper=True, out=(K.mT, info))
        return int(info)

    info, t_chol = _timed(torch_cholesky, device)
    assert info == 0, f"Cholesky failed at row {info}"
    alpha, t_solve = _timed(lambda: kn.cholesky_solve_inplace_factor(K, Y), device)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    del K
    pred, t_check = _timed(lambda: kn.predict(F, F, alpha, "rbf", gamma, block), device)
    train_error = float((pred.argmax(1) != Y.argmax(1)).float().mean())
    gram_flops, chol_flops, solve_flops = n * n * dim, n**3 / 3, 2 * n * n * 10
    total = t_gram + t_chol + t_solve
    res = {
        "n": n, "dim": dim, "dataset": dataset, "shift": shift, "dtype": dtype_name, "device": str(device), "threads": torch.get_num_threads(),
        "block_rows": block,
        "gram_seconds": t_gram, "cholesky_seconds": t_chol, "solve_seconds": t_solve, "total_seconds": total,
        "check_seconds": t_check, "train_error": train_error,
        "gram_gflops": gram_flops / t_gram / 1e9, "cholesky_gflops": chol_flops / t_chol / 1e9,
        "total_gflops": (gram_flops + chol_flops + solve_flops) / total / 1e9,
        "matmul_gflops": mm_gflops,
        "K_bytes": n * n * F.element_size(),
        "peak_rss_bytes": peak, "rss_before_gram_bytes": rss0, "gram_solve_extra_bytes": peak - rss0,
    }
    res["fraction_of_matmul"] = res["total_gflops"] / mm_gflops
    if device.type == "cuda":
        res["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", metavar="OUT", help="also write the result here")
    p.add_argument("--sizes", default="5000,10000,20000")
    p.add_argument("--dim", type=int, default=3072)
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--dataset", default="random", choices=("random", "fashion_mnist"),
                   help="random CIFAR-shaped vectors (default) or the first n Fashion-MNIST training images")
    p.add_argument("--interpolate", action="store_true",
                   help="also run the interpolation solver (fashion_mnist) in its own process after the Cholesky")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--child-interpolate", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        out = (interpolate_child(args.child, args.dataset, "rbf") if args.child_interpolate
               else child(args.child, args.dim, args.dtype, args.device, args.dataset))
        print(json.dumps(out))
        return 0
    if args.interpolate and (args.dataset == "random" or args.dtype != "float32"):
        print("bench/kernel.py: error: --interpolate needs --dataset fashion_mnist and --dtype float32", file=sys.stderr)
        return 2
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
        if min(sizes) < 1:
            raise ValueError
    except ValueError:
        print(f"bench/kernel.py: error: --sizes {args.sizes!r} must be positive integers separated by commas", file=sys.stderr)
        return 2
    runs, solves = [], []
    for n in sizes:
        cmd = [sys.executable, __file__, "--child", str(n), "--dim", str(args.dim), "--dtype", args.dtype,
               "--device", args.device, "--dataset", args.dataset]
        for extra in ([], ["--child-interpolate"]) if args.interpolate else ([],):
            proc = subprocess.run(cmd + extra, capture_output=True, text=True, cwd=REPO, env={**os.environ})
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return 1
            got = json.loads(proc.stdout.strip().splitlines()[-1])
            if extra:
                r = got["result"]
                got["cholesky_seconds"] = runs[-1]["cholesky_seconds"]
                got["solve_over_cholesky"] = r["gram_solve_seconds"] / runs[-1]["cholesky_seconds"]
                solves.append(got)
                print(f"n={n}: interpolation solve {r['gram_solve_seconds']:.1f} s ({got['solve_over_cholesky']:.2f} x "
                      f"the Cholesky), train error {r['train_error']}, max residual {r['max_fit_residual']:.2g}, "
                      f"peak RSS {got['peak_rss_bytes'] / 2**30:.2f} GiB", file=sys.stderr)
                continue
            runs.append(got)
            print(f"n={n}: {runs[-1]['total_seconds']:.1f} s, {runs[-1]['total_gflops']:.0f} GFLOP/s "
                  f"(matmul {runs[-1]['matmul_gflops']:.0f}), peak RSS {runs[-1]['peak_rss_bytes'] / 2**30:.2f} GiB",
                  file=sys.stderr)
    out = {"benchmark": "kernel_gram_cholesky_solve", "kernel": "rbf", "dataset": args.dataset, "runs": runs,
           "interpolation_solves": solves, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": f"{os.cpu_count()} cores, {os.uname().sysname} {os.uname().release}"}
    text = json.dumps(out, indent=2)
    if args.json:
        from rethink_dist.files import write_json_atomic

        write_json_atomic(args.json, out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
