"""The GPU check: the project's own GPU code paths, measured in one short run (no Ray, MLflow or FFCV).

    python3 bench/gpu_check.py --out gpu_check.json            # on one H100/H200: about 6 minutes
    python3 bench/gpu_check.py --smoke --out smoke.json         # tiny sizes on the CPU (the test suite runs it)

Sections, each measured with the package's own code (``Trial``, the models, the in-memory loader,
the kernel solver), each written to the JSON as soon as it is done (a run cut short keeps what it
measured; a section that fails records its error and the others still run):

- ``ceiling``: a bf16 (and an fp32) matrix product on the device: the FLOP/s every other number
  is compared with.
- ``archs``: MLP 1x512, MLP 3x512, small AlexNet, small Inception on 50,000 CIFAR-format images
  held on the device, fp32 and bf16: whole-epoch training images/s (the second epoch; the first
  warms up cuDNN and the allocator; --smoke times the first), evaluation seconds (both splits), training FLOP/s (FLOPs
  counted by torch's FlopCounterMode on one step) and their fraction of the ceiling measured in the
  same precision (``of_ceiling``: an fp32 trial against the fp32 product, a bf16 trial against bf16).
- ``sharing``: 1, 2, 4, 8 processes, each a small trial (MLP 1x512 on 10,000 images) on the same
  GPU, as fractional ``resources.gpus`` places them: aggregate images/s against one alone.
- ``inception_v3``: 299x299, batch 32/64/128, bf16 autocast, channels_last: training images/s
  per GPU (the README cost estimate's assumption A3).
- ``kernel``: the minimum-norm RBF solve at n = 50,000 (3,072 features, float32) on the device:
  seconds, peak GPU memory, train error.
- ``phenomenon``: one MLP 1x512 trial fitting random labels on the CIFAR-format data until 99%
  training accuracy (or the time left): steps and seconds to fit.

Images are random uint8 pixels (CIFAR-10 cannot be fetched here; speed does not depend on the
values). Prints the JSON at the end. ``--budget-s`` stops starting new measurements after that
many seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ARCHS = ("mlp_1x512", "mlp_3x512", "alexnet_small", "inception_small")
FULL = {"n_train": 50_000, "n_test": 10_000, "matmul": 8192, "share_procs": (1, 2, 4, 8), "share_train": 10_000,
        "share_seconds": 12.0, "v3_batches": (32, 64, 128), "v3_size": 299, "v3_steps": 10, "kernel_n": 50_000,
        "kernel_d": 3072, "fit_seconds": 90.0, "archs": ARCHS, "warmup_epochs": 1, "v3_warmup": 2}
SMOKE = {"n_train": 8, "n_test": 8, "matmul": 256, "share_procs": (1, 2), "share_train": 8,
         "share_seconds": 1.0, "v3_batches": (2,), "v3_size": 75, "v3_steps": 1, "kernel_n": 300,
         "kernel_d": 48, "fit_seconds": 10.0, "archs": ARCHS, "warmup_epochs": 0, "v3_warmup": 0}


# ------------------------------------------------------------------------------------ helpers
def _device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: --device cuda but no CUDA device is available; valid here: auto, cpu")
    return torch.device(name)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops(device, n: int, dtype_name: str, reps: int = 10) -> float:
    """FLOP/s of an n x n x n matrix product in ``dtype_name`` (best of three timed groups)."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = math.inf
    for _ in range(3):
        _sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 * reps / best


def train_flops_per_image(arch: str, shape: tuple[int, int, int], batch: int = 32) -> float:
    """Forward + backward FLOPs per image of one training step (torch's FlopCounterMode, on the CPU)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from rethink_dist.models import create

    model = create(arch, shape, 10)
    x = torch.randn(batch, *shape)
    y = torch.randint(0, 10, (batch,))
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        F.cross_entropy(out[0] if isinstance(out, tuple) else out, y).backward()
    return counter.get_total_flops() / batch


def cifar_like(n_train: int, n_test: int, seed: int = 0):
    """Random uint8 images in CIFAR-10's stored shape (N x 32 x 32 x 3) and random labels."""
    import numpy as np

    from rethink_dist.data import ArrayDataset

    rng = np.random.default_rng(seed)
    return ArrayDataset("cifar10", rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
                        rng.integers(0, 10, n_train).astype(np.int64),
                        rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
                        rng.integers(0, 10, n_test).astype(np.int64), tuple(str(i) for i in range(10)), "generated")


def make_trial(ds, arch: str, device, precision: str, corruption: dict | None = None, fit: bool = False):
    """A project Trial on ``ds`` held on ``device`` by the in-memory loader (the paper's 28x28 crop)."""
    from rethink_dist.config import TrialConfig
    from rethink_dist.data.memory import MemoryLoader, corrupt_dataset
    from rethink_dist.train import Trial, labels_fingerprint

    cfg = TrialConfig.from_dict({
        "data": {"name": "cifar10"}, "model": {"name": arch},
        "corruption": corruption or {"kind": "none"}, "optim": {"epochs": 100_000},
        "stop": {"stop_when_fitted": fit, "fit_threshold": 0.99},
        "device": device.type, "precision": precision,
    })
    arrays = corrupt_dataset(ds, cfg.corruption)
    loader = MemoryLoader(arrays, 28, False, 0, device)
    meta = {"num_classes": 10, "labels_fingerprint": labels_fingerprint(arrays.train_y)}
    return Trial(cfg, loader=loader, meta=meta)


def _finite(obj: Any) -> Any:
    """The result with every NaN or infinity replaced by None (strict JSON; the test looks for None)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


class Check:
    """Runs the sections under a time budget and keeps the JSON up to date on disk."""

    def __init__(self, out: Path | None, budget_s: float):
        self.out, self.budget_s, self.t0 = out, budget_s, time.perf_counter()
        self.result: dict[str, Any] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def section(self, name: str, fn: Callable[[], Any]) -> None:
        if self.left() <= 0:
            self.result[name] = {"skipped": f"time budget of {self.budget_s:g} s spent"}
        else:
            t = time.perf_counter()
            try:
                self.result[name] = fn()
            except Exception as e:  # noqa: BLE001 - one failed section must not lose the others
                self.result[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            if isinstance(self.result[name], dict):
                self.result[name]["section_seconds"] = time.perf_counter() - t
        print(f"gpu_check: {name} done at {self.elapsed():.0f} s", file=sys.stderr, flush=True)
        self.save()

    def save(self) -> None:
        if self.out is None:
            return
        from rethink_dist.files import write_json_atomic

        write_json_atomic(self.out, _finite(self.result), indent=1)


# ------------------------------------------------------------------------------------ sections
def env_section(device) -> dict[str, Any]:
    import torch

    d: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
                         "cpu_count": os.cpu_count(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        d.update(gpu=p.name, gpu_memory_gib=p.total_memory / 2**30, capability=f"{p.major}.{p.minor}",
                 multiprocessors=p.multi_processor_count, cuda=torch.version.cuda,
                 cudnn=torch.backends.cudnn.version())
    return d


def ceiling_section(device, sizes) -> dict[str, Any]:
    return {"matmul_n": sizes["matmul"], "bf16_flops_per_s": matmul_flops(device, sizes["matmul"], "bf16"),
            "fp32_flops_per_s": matmul_flops(device, sizes["matmul"], "fp32")}


def archs_section(device, sizes, ceiling: dict[str, float], check: Check) -> dict[str, Any]:
    ds = cifar_like(sizes["n_train"], sizes["n_test"])
    out: dict[str, Any] = {"n_train": sizes["n_train"], "n_test": sizes["n_test"]}
    for arch in sizes["archs"]:
        flops = train_flops_per_image(arch, (3, 28, 28))
        row: dict[str, Any] = {"train_flops_per_image": flops}
        for precision in ("fp32", "bf16"):
            if check.left() <= 0:
                row[precision] = {"skipped": "time budget spent"}
                continue
            trial = make_trial(ds, arch, device, precision)
            for _ in range(sizes["warmup_epochs"]):  # cuDNN's algorithm search, the allocator, lazy inits
                trial.run_epoch()
            rec = trial.run_epoch()
            ips = rec["images_per_s"]
            row[precision] = {"images_per_s": ips, "train_seconds": rec["train_seconds"],
                              "eval_seconds": rec["eval_seconds"], "flops_per_s": flops * ips,
                              "of_ceiling": flops * ips / ceiling[precision], "channels_last": trial.channels_last}
            del trial
            if device.type == "cuda":
                import torch

                torch.cuda.empty_cache()
        out[arch] = row
    return out


def _share_worker(args: argparse.Namespace) -> int:
    """One process of the sharing test: a small trial's epochs for a fixed time; prints its images/s."""
    device = _device(args.device)
    sizes = SMOKE if args.smoke else FULL
    trial = make_trial(cifar_like(sizes["share_train"], max(8, sizes["share_train"] // 10), seed=os.getpid()),
                       "mlp_1x512", device, "auto")
    trial.run_epoch()  # warm-up
    print("READY", flush=True)
    sys.stdin.readline()  # all workers start timing together
    images, seconds, t0 = 0, 0.0, time.perf_counter()
    while time.perf_counter() - t0 < args.share_seconds:
        rec = trial.run_epoch()
        images += trial.loader.num_train
        seconds += rec["train_seconds"] + rec["eval_seconds"]
    print(json.dumps({"images": images, "wall_seconds": time.perf_counter() - t0, "epoch_seconds": seconds}), flush=True)
    return 0


def sharing_section(device, sizes, smoke: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"arch": "mlp_1x512", "n_train": sizes["share_train"], "seconds": sizes["share_seconds"]}
    for n in sizes["share_procs"]:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--share-worker", "--device", device.type,
               "--share-seconds", str(sizes["share_seconds"])] + (["--smoke"] if smoke else [])
        env = {**os.environ, "OMP_NUM_THREADS": "1"} if device.type == "cpu" else dict(os.environ)
        procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
                 for _ in range(n)]
        try:
            for p in procs:
                line = p.stdout.readline()
                if line.strip() != "READY":
                    raise RuntimeError(f"a sharing worker did not start: {line.strip()!r}")
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            res = [json.loads(p.stdout.readline()) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.stdin.close()
                    p.wait(60)
        total = sum(r["images"] / r["wall_seconds"] for r in res)
        out[f"procs_{n}"] = {"aggregate_images_per_s": total, "per_process_images_per_s": total / n}
    one = out[f"procs_{sizes['share_procs'][0]}"]["aggregate_images_per_s"]
    for n in sizes["share_procs"]:
        out[f"procs_{n}"]["speedup_vs_one"] = out[f"procs_{n}"]["aggregate_images_per_s"] / one
    return out


def inception_v3_section(device, sizes) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from rethink_dist.models import create

    side = sizes["v3_size"]
    out: dict[str, Any] = {"image_size": side, "precision": "bf16", "channels_last": True}
    for batch in sizes["v3_batches"]:
        torch.manual_seed(0)
        model = create("inception_v3", (3, side, side), 1000).to(device).to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        x = torch.randn(batch, 3, side, side, device=device).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 1000, (batch,), device=device)

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                out = model(x)  # (logits, aux logits) where the auxiliary head fits (299x299), else logits
            main, aux = out if isinstance(out, tuple) else (out, None)
            loss = F.cross_entropy(main.float(), y)
            if aux is not None:
                loss = loss + 0.4 * F.cross_entropy(aux.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss

        model.train()
        for _ in range(sizes["v3_warmup"]):
            step()
        _sync(device)
        t = time.perf_counter()
        for _ in range(sizes["v3_steps"]):
            loss = step()
        _sync(device)
        seconds = time.perf_counter() - t
        out[f"batch_{batch}"] = {"images_per_s": batch * sizes["v3_steps"] / seconds, "loss": float(loss),
                                 "aux_logits": side >= 299}
        del model, opt
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def kernel_section(device, sizes) -> dict[str, Any]:
    import torch

    from rethink_dist.theory import kernel as kn

    n, d = sizes["kernel_n"], sizes["kernel_d"]
    gen = torch.Generator(device="cpu").manual_seed(0)
    F_tr = (torch.randint(0, 256, (n, d), generator=gen, dtype=torch.uint8).to(device).float() / 255.0)
    labels = torch.randint(0, 10, (n,), generator=gen).to(device)
    Y = torch.nn.functional.one_hot(labels, 10).float()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    fit = kn.interpolate(F_tr, Y, kernel="rbf")
    _sync(device)
    seconds = time.perf_counter() - t
    return {"n": n, "d": d, "dtype": "float32", "seconds": seconds, "gram_solve_seconds": fit.gram_solve_seconds,
            "solver": fit.solution.solver, "singular": fit.solution.singular,
            "train_error": float((fit.train_pred.argmax(1) != labels).float().mean()),
            "peak_gpu_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0}


def phenomenon_section(device, sizes, check: Check) -> dict[str, Any]:
    trial = make_trial(cifar_like(sizes["n_train"], sizes["n_test"], seed=1), "mlp_1x512", device, "auto",
                       corruption={"kind": "labels", "level": 1.0}, fit=True)
    limit = min(sizes["fit_seconds"], max(1.0, check.left()))
    t = time.perf_counter()
    while not trial.done and time.perf_counter() - t < limit:
        trial.run_epoch()
    s = trial.summary()
    return {"arch": "mlp_1x512", "corruption": "random labels", "n_train": sizes["n_train"], "fitted": s["fitted"],
            "steps_to_fit": s["steps_to_fit"], "epochs": s["epochs"], "train_acc": s["train_acc"],
            "test_acc": s["test_acc"], "seconds": time.perf_counter() - t}


# ------------------------------------------------------------------------------------ main
def parse_args(argv):
    p = argparse.ArgumentParser(description="The project's GPU paths, measured in one run.")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (seconds on a CPU)")
    p.add_argument("--out", help="write the JSON here (kept up to date section by section)")
    p.add_argument("--device", default="auto", help="auto (default: cuda if present) | cuda | cpu")
    p.add_argument("--budget-s", type=float, default=420.0, help="start no new measurement after this (default 420)")
    p.add_argument("--share-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--share-seconds", type=float, default=FULL["share_seconds"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not (args.budget_s > 0 and math.isfinite(args.budget_s)):
        p.error(f"--budget-s {args.budget_s} is not valid; valid: a number of seconds > 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.share_worker:
        return _share_worker(args)
    import torch

    device = _device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    sizes = SMOKE if args.smoke else FULL
    check = Check(Path(args.out) if args.out else None, args.budget_s)
    check.result["mode"] = "smoke" if args.smoke else "full"
    check.section("env", lambda: env_section(device))
    check.section("ceiling", lambda: ceiling_section(device, sizes))
    ceiling = {p: check.result["ceiling"].get(f"{p}_flops_per_s") or float("nan") for p in ("fp32", "bf16")}
    check.section("archs", lambda: archs_section(device, sizes, ceiling, check))
    check.section("sharing", lambda: sharing_section(device, sizes, args.smoke))
    check.section("inception_v3", lambda: inception_v3_section(device, sizes))
    check.section("kernel", lambda: kernel_section(device, sizes))
    check.section("phenomenon", lambda: phenomenon_section(device, sizes, check))
    check.result["total_seconds"] = check.elapsed()
    check.save()
    print(json.dumps(_finite(check.result), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
