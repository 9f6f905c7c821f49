"""The GPU check: the project's own GPU code paths, measured and judged in two short runs (no Ray,
MLflow or FFCV: only torch, torchvision, numpy, numba).

On a GPU machine with torch, from the repository root (docs/speed.md gives the whole recipe):

    mkdir -p .data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz .data/fashion-mnist/
    python3 bench/gpu_check.py --sections defects,paper --fashion-root .data/fashion-mnist \
        --budget-s 300 --json OUT/gpu_check_1.json                  # about 5.5 minutes
    python3 bench/gpu_check.py --sections archs,sharing,kernel,inception_v3 \
        --budget-s 270 --json OUT/gpu_check_2.json                  # about 5 minutes
    python3 bench/gpu_check.py --smoke --device cpu --json smoke.json  # tiny sizes on a CPU (the test suite)

Sections, in the order of their priority (the order they run in; ``--sections`` picks some),
each measured with the package's own code (``Trial``, the models, the in-memory loader, the
kernel solver), each written to the JSON as soon as it is done (a run cut short keeps what it
measured; a section that fails records its error and the others still run); ``env`` and
``ceiling`` (a bf16 and an fp32 matrix product: the FLOP/s every other number is compared with)
run first in every run:

- ``defects``: the GPU defects only a GPU can show, each small: ``augment`` (the random
  crop's host-device synchronizations per epoch and step, counted by CUDA's sync debug mode),
  ``lrn_bf16`` (the small AlexNet's LRN under bf16 autocast against float64), ``channels_last``
  (a batch from the channels-last cache against the old gather + copy, and a training step),
  ``determinism`` (two identical runs of one epoch: bitwise equal weights, or how far apart against
  the epoch's own update), ``profile`` (bench/train.py's profile on the device).
- ``paper``: the small AlexNet and the small Inception on Fashion-MNIST's 60,000 real training
  images, true labels, random labels and pixel corruptions, each until it fits (99%) or its time
  runs out, several trials at once on the GPU (bench/gpu_paper.py says how and why so); each
  fitted trial's training predictions in bf16 against fp32 (``eval_precision``). Needs
  ``--fashion-root`` (the four .gz files). Its rows become docs/results/fashion-mnist.md's conv-net
  rows (docs/results/fashion_mnist.py).
- ``archs``: MLP 1x512, MLP 3x512, small AlexNet, small Inception on 50,000 CIFAR-format images
  held on the device, fp32 and bf16: whole-epoch training images/s (the second epoch; the first
  warms up cuDNN and the allocator; --smoke times the first), evaluation seconds (both splits),
  training FLOP/s (FLOPs counted by torch's FlopCounterMode on one step) and their fraction of the
  ceiling measured in the same precision (``of_ceiling``). docs/cluster.md's measured cost of the
  whole paper is computed from these (bench/table.py cost).
- ``sharing``: 1, 2, 4, 8 processes, each a small trial (MLP 1x512 on 10,000 images) on the same
  GPU, as fractional ``resources.gpus`` places them: aggregate images/s against one alone.
- ``kernel``: the minimum-norm RBF solve at n = 50,000 (3,072 features, float32) on the device:
  seconds, peak GPU memory, train error; the linear kernel's SVD route (QR on CUDA) at the same n,
  checked against the plain SVD; the random-conv features (TF32 off) against float64 on the CPU.
- ``inception_v3``: 299x299, batch 32/64/128, bf16 autocast, channels_last: training images/s
  per GPU (docs/cluster.md's assumption A3).

Every section states what it expects (bench/gpu_expectations.py: the thresholds and why); the run
ends with the table of verdicts, met / not met and the number, printed last and stored in the
JSON (``expectations``). Images outside ``paper`` are random uint8 pixels in CIFAR-10's shape
(speed does not depend on the values). ``--budget-s`` bounds the run: no section starts after it,
the paper's trials stop by it, the archs skip what it does not leave room for.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

ARCHS = ("mlp_1x512", "mlp_3x512", "alexnet_small", "inception_small")
FULL = {"n_train": 50_000, "n_test": 10_000, "matmul": 8192, "share_procs": (1, 4, 8, 2), "share_train": 10_000,
        "share_seconds": 8.0, "v3_batches": (32, 64, 128), "v3_size": 299, "v3_steps": 10, "kernel_n": 50_000,
        "kernel_d": 3072, "archs": ARCHS, "warmup_epochs": 1, "v3_warmup": 2,
        "defect_n": 10_000, "profile_steps": 10, "svd_check_n": 4096, "conv_check_n": 256, "timing_reps": 20}
SMOKE = {"n_train": 8, "n_test": 8, "matmul": 256, "share_procs": (1, 4), "share_train": 8,
         "share_seconds": 1.0, "v3_batches": (2,), "v3_size": 75, "v3_steps": 1, "kernel_n": 300,
         "kernel_d": 48, "archs": ARCHS, "warmup_epochs": 0, "v3_warmup": 0,
         "defect_n": 16, "profile_steps": 2, "svd_check_n": 200, "conv_check_n": 8, "timing_reps": 2}


# ------------------------------------------------------------------------------------ helpers
def _device(name: str):
    """The trial loop's own device choice (rethink_dist.train.resolve_device); a refusal ends the run."""
    from rethink_dist.errors import ConfigError
    from rethink_dist.train import resolve_device

    try:
        return resolve_device(name)
    except ConfigError as e:
        raise SystemExit(f"gpu_check: {e}") from None


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


def make_trial(ds, arch: str, device, precision: str, corruption: dict | None = None, fit: bool = False,
               augment: bool = False, seed: int = 0):
    """A project Trial on ``ds`` held on ``device`` by the in-memory loader (the paper's 28x28 crop;
    ``augment``: random 28x28 crops of the 32x32 images, drawn per batch)."""
    from rethink_dist.config import TrialConfig
    from rethink_dist.data.memory import MemoryLoader, corrupt_dataset
    from rethink_dist.train import Trial, labels_fingerprint

    cfg = TrialConfig.from_dict({
        "data": {"name": "cifar10"}, "model": {"name": arch},
        "corruption": corruption or {"kind": "none"}, "optim": {"epochs": 100_000},
        "stop": {"stop_when_fitted": fit, "fit_threshold": 0.99}, "reg": {"augment": augment},
        "device": device.type, "precision": precision, "seed": seed,
    })
    arrays = corrupt_dataset(ds, cfg.corruption)
    loader = MemoryLoader(arrays, 28, augment, 0, device)
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
    n = sizes["matmul"] if device.type == "cuda" else min(sizes["matmul"], 2048)  # a CPU: seconds, not minutes
    return {"matmul_n": n, "bf16_flops_per_s": matmul_flops(device, n, "bf16"),
            "fp32_flops_per_s": matmul_flops(device, n, "fp32")}


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


# ------------------------------------------------------------------ the GPU defects
def count_syncs(device, fn: Callable[[], Any]) -> int | None:
    """Run ``fn`` with CUDA's sync debug mode on "warn" and count the host-device synchronizations it
    made (blocking copies, .item(), nonzero, ...). None on a CPU, where there is nothing to count."""
    import warnings

    import torch

    if device.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def augment_check(device, sizes) -> dict[str, Any]:
    """The random-crop path draws its offsets on the CPU (the same crops on every device) and
    sends them in one pinned, asynchronous copy. Counted: the synchronizations of one epoch's batches
    (the epoch's order is one blocking copy) and of a whole training epoch with evaluation."""
    import torch

    n = sizes["defect_n"]
    trial = make_trial(cifar_like(n, max(8, n // 5), seed=2), "alexnet_small", device, "auto", augment=True)
    trial.run_epoch()  # warm-up
    bs = trial.config.optim.batch_size
    batches = math.ceil(n / bs)

    def loader_epoch() -> None:
        for x, _ in trial.loader.train_batches(bs, torch.Generator().manual_seed(7)):
            x.sum()  # use the batch on the device (no sync)

    loader_syncs = count_syncs(device, loader_epoch)
    recs: list[dict[str, Any]] = []
    epoch_syncs = count_syncs(device, lambda: recs.append(trial.run_epoch()))
    out = {"arch": "alexnet_small", "n_train": n, "batches_per_epoch": batches,
           "images_per_s": recs[0]["images_per_s"], "syncs_counted": epoch_syncs is not None}
    if epoch_syncs is not None:
        out.update(loader_syncs_per_epoch=loader_syncs, epoch_syncs=epoch_syncs,
                   epoch_syncs_per_step=epoch_syncs / batches)
    return out


def lrn_check(device) -> dict[str, Any]:
    """The small AlexNet's LRN under bf16 autocast. Its input is the model's own first
    conv-ReLU-pool output on whitened images, in bf16, as it is at initialisation (``scale_1``) and
    8 times larger (``scale_8``: trained activations grow). "shrink" is mean(input - output) /
    mean(input), what the layer takes off: the reference computes it in float64; the project's layer
    computes in float32 and returns bf16; a plain nn.LocalResponseNorm under CUDA autocast computes
    its divisor 1 + 0.001 * mean(x^2) in bf16, where it rounds to 1 unless the activations are large.
    At initialisation the whole effect is below bf16's resolution: the project's layer keeps it only
    where the output's rounding can show it."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from rethink_dist.data.preprocess import preprocess
    from rethink_dist.models import create

    torch.manual_seed(0)
    model = create("alexnet_small", (3, 28, 28), 10).to(device).eval()
    raw = torch.from_numpy(cifar_like(256, 8, seed=3).train_x).permute(0, 3, 1, 2).contiguous().to(device)
    lrn = model.features[3]
    plain = nn.LocalResponseNorm(lrn.size, alpha=lrn.alpha, beta=lrn.beta, k=lrn.k)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
        a1 = model.features[:3](preprocess(raw, 28))
    out: dict[str, Any] = {"input_dtype": str(a1.dtype)[6:]}
    for scale in (1, 8):
        a = a1 * scale
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
            ours, theirs = lrn(a), plain(a)
        ref = F.local_response_norm(a.double(), lrn.size, alpha=lrn.alpha, beta=lrn.beta, k=lrn.k)
        mean_in = float(a.double().mean())
        out[f"scale_{scale}"] = {
            "shrink_reference_fp64": float((a.double() - ref).mean()) / mean_in,
            "shrink_project_layer": float((a.double() - ours.double()).mean()) / mean_in,
            "shrink_plain_lrn_under_autocast": float((a.double() - theirs.double()).mean()) / mean_in,
            "output_dtype": str(ours.dtype)[6:]}
    return out


def channels_last_check(device, sizes) -> dict[str, Any]:
    """A conv net's batch as the loader gathers it from its channels-last cache, against the
    N x C x H x W cache's gather plus the copy to channels-last it needed, next to a training step."""
    import torch

    trial = make_trial(cifar_like(sizes["defect_n"], 8, seed=4), "alexnet_small", device, "auto")
    trial.run_epoch()
    bs, reps = trial.config.optim.batch_size, sizes["timing_reps"]
    gen = torch.Generator().manual_seed(5)
    x, y = next(iter(trial.loader.train_batches(bs, gen)))
    idx = torch.randperm(trial.loader.num_train, generator=gen)[:bs].to(device)

    def timed(fn) -> float:
        fn()
        _sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        _sync(device)
        return (time.perf_counter() - t) / reps * 1e3

    def step() -> None:
        loss = trial.train_step_loss(trial.model_input(x), y)
        trial.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trial.optimizer.step()

    trial.model.train()
    nchw = trial.loader.train_eval.contiguous()  # an N x C x H x W cache, as the loader held it before
    batch_ms = timed(lambda: trial.model_input(trial.loader.gather(trial.loader.train_eval, idx)))
    nchw_ms = timed(lambda: trial.model_input(nchw.index_select(0, idx)))
    step_ms = timed(step)
    return {"arch": "alexnet_small", "batch": bs, "channels_last": trial.channels_last,
            "batch_is_channels_last": x.is_contiguous(memory_format=torch.channels_last),
            "loader_batch_ms": batch_ms, "nchw_gather_and_copy_ms": nchw_ms, "train_step_ms": step_ms,
            "saved_share_of_step": max(0.0, nchw_ms - batch_ms) / step_ms}


def determinism_check(device, sizes) -> dict[str, Any]:
    """Two runs of the same trial (same seeds, same data) after one epoch: are the weights
    bitwise equal? On CUDA some backward kernels (pooling, cuDNN's choices) are not deterministic,
    so a GPU resume is not bit-exact; the difference says how far apart they drift, set against how
    far the epoch moved the weights from their initial values (``epoch_update_max_abs``)."""
    import torch

    ds = cifar_like(sizes["defect_n"], 8, seed=6)
    params, init = [], None
    for _ in range(2):
        trial = make_trial(ds, "alexnet_small", device, "auto")
        if init is None:
            init = torch.cat([p.detach().float().flatten() for p in trial.model.parameters()])
        trial.run_epoch()
        params.append(torch.cat([p.detach().float().flatten() for p in trial.model.parameters()]))
        del trial
    diff = float((params[0] - params[1]).abs().max())
    update = float((params[0] - init).abs().max())
    return {"arch": "alexnet_small", "epochs": 1, "bitwise_equal": bool(torch.equal(params[0], params[1])),
            "max_abs_weight_diff": diff, "weight_scale": float(params[0].abs().max()),
            "epoch_update_max_abs": update, "diff_over_update": diff / update if update > 0 else float("nan")}


def profile_check(device, sizes) -> dict[str, Any]:
    """bench/train.py's profile of the trial loop on the device: that torch.profiler's device-time
    keys are the ones the profile reads (``self_device_time_total``)."""
    from types import SimpleNamespace

    import train as bench_train  # bench/train.py: this folder is on sys.path

    trial = make_trial(cifar_like(sizes["defect_n"], max(8, sizes["defect_n"] // 5), seed=8), "mlp_1x512", device, "auto")
    trial.run_epoch()
    prof = bench_train.Ours.profile(SimpleNamespace(trial=trial), steps=sizes["profile_steps"], top=5)
    return {"train_step_seconds_by_phase": prof["train_step_seconds_by_phase"],
            "eval_seconds_profiled": prof["eval_seconds_profiled"],
            "train_top_ops": [{"op": o["op"], "ms_per_step": o["ms_per_step"]} for o in prof["train_top_ops"]]}


def defects_section(device, sizes, check: Check) -> dict[str, Any]:
    """The GPU defects that only a GPU can show, each small; one failing keeps the others."""
    out: dict[str, Any] = {}
    for name, fn in (("augment", lambda: augment_check(device, sizes)), ("lrn_bf16", lambda: lrn_check(device)),
                     ("channels_last", lambda: channels_last_check(device, sizes)),
                     ("determinism", lambda: determinism_check(device, sizes)),
                     ("profile", lambda: profile_check(device, sizes))):
        if check.left() <= 0:
            out[name] = {"skipped": "time budget spent"}
            continue
        try:
            out[name] = fn()
        except Exception as e:  # noqa: BLE001 - one failed check must not lose the others
            out[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
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


def sharing_section(device, sizes, smoke: bool, check: Check) -> dict[str, Any]:
    """Process counts in the order of what they decide: 1 (the reference) and 4 (the sweeps' 0.25 GPU
    per trial) first; a count is skipped when the budget leaves less than its timing and start-up."""
    out: dict[str, Any] = {"arch": "mlp_1x512", "n_train": sizes["share_train"], "seconds": sizes["share_seconds"]}
    for n in sizes["share_procs"]:
        if n != sizes["share_procs"][0] and check.left() < sizes["share_seconds"] + 20:
            out[f"procs_{n}"] = {"skipped": "time budget spent"}
            continue
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
        except BaseException:  # stopped (a signal, a worker that did not start): end the workers now
            for p in procs:
                if p.poll() is None:
                    p.kill()
            raise
        finally:
            for p in procs:
                if p.poll() is None:
                    p.stdin.close()
                    p.wait(60)
        total = sum(r["images"] / r["wall_seconds"] for r in res)
        out[f"procs_{n}"] = {"aggregate_images_per_s": total, "per_process_images_per_s": total / n}
    one = out[f"procs_{sizes['share_procs'][0]}"]["aggregate_images_per_s"]
    for n in sizes["share_procs"]:
        if "aggregate_images_per_s" in out[f"procs_{n}"]:
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
        out[f"batch_{batch}"] = {"images_per_s": batch * sizes["v3_steps"] / seconds, "loss": float(loss.detach()),
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
    out = {"n": n, "d": d, "dtype": "float32", "seconds": seconds, "gram_solve_seconds": fit.gram_solve_seconds,
           "solver": fit.solution.solver, "singular": fit.solution.singular,
           "train_error": float((fit.train_pred.argmax(1) != labels).float().mean()),
           "peak_gpu_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0}
    del fit
    out["linear"] = linear_route_check(device, sizes, F_tr, Y, labels)
    out["random_conv"] = random_conv_check(device, sizes)
    return out


def linear_route_check(device, sizes, F_tr, Y, labels) -> dict[str, Any]:
    """The linear kernel with n > D is solved from the features' SVD, never forming K; on CUDA
    through QR (F = QR, then the D x D SVD of R). Timed at the full n; checked against torch's plain
    SVD on the first ``svd_check_n`` rows (the projection U U^T Y both give)."""
    import torch

    from rethink_dist.theory import kernel as kn

    t = time.perf_counter()
    fit = kn.interpolate(F_tr, Y, kernel="linear")
    _sync(device)
    seconds = time.perf_counter() - t
    m = min(sizes["svd_check_n"], len(F_tr))
    sub, ys = F_tr[:m].double(), Y[:m].double()
    proj = []
    for via_qr in (True, False):
        U, S = kn.left_singular(sub, via_qr=via_qr)
        U = U[:, S > S[0] * m * torch.finfo(torch.float64).eps]
        proj.append(U @ (U.mT @ ys))
    return {"n": len(F_tr), "seconds": seconds, "solver": fit.solution.solver, "rank": fit.solution.rank,
            "train_error": float((fit.train_pred.argmax(1) != labels).float().mean()),
            "qr_vs_plain_svd_max_abs_diff": float((proj[0] - proj[1]).abs().max()), "checked_rows": m}


def random_conv_check(device, sizes) -> dict[str, Any]:
    """The random-conv features in float32 on the device (TF32 off on that path) against
    float64 on the CPU: the largest difference relative to the features' largest value."""
    import numpy as np

    from rethink_dist.theory import kernel as kn

    imgs = np.random.default_rng(9).integers(0, 256, (sizes["conv_check_n"], 32, 32, 3), dtype=np.uint8)
    import torch

    ours = kn.random_conv_features(imgs, 64, dtype=torch.float32, device=device).double().cpu()
    ref = kn.random_conv_features(imgs, 64, dtype=torch.float64, device="cpu")
    return {"n": len(imgs), "filters": 64, "max_rel_diff_vs_cpu_fp64": float((ours - ref).abs().max() / ref.abs().max())}


# ------------------------------------------------------------------------------------ main
class Stopped(Exception):
    """The run was told to stop (SIGTERM): the section in progress ends, the rest are skipped."""


SECTIONS = ("defects", "paper", "archs", "sharing", "kernel", "inception_v3")  # in the order of their priority


def parse_args(argv):
    p = argparse.ArgumentParser(description="The project's GPU paths, measured and judged in one run.")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (seconds on a CPU)")
    p.add_argument("--json", metavar="OUT", help="also write the JSON here (kept up to date section by section)")
    p.add_argument("--device", default="auto", help="auto (default: cuda if present) | cuda | cpu")
    p.add_argument("--budget-s", type=float, default=300.0,
                   help="no section starts after this many seconds, and the paper's trials stop by then (default 300)")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated, run in this priority order whatever order is given: {','.join(SECTIONS)} "
                        "(default: all)")
    p.add_argument("--fashion-root", default="/usr/share/datasets/fashion-mnist",
                   help="folder with Fashion-MNIST's four IDX .gz files (the paper section; default: Debian's)")
    p.add_argument("--paper-slots", type=int, default=None, help="paper trials at once (default 6; smoke 3)")
    p.add_argument("--break-expectation", action="append", default=[], metavar="NAME",
                   help="give expectation NAME a threshold nothing can meet (tests that 'not met' is reported)")
    p.add_argument("--share-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--share-seconds", type=float, default=FULL["share_seconds"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not (args.budget_s > 0 and math.isfinite(args.budget_s)):
        p.error(f"--budget-s {args.budget_s} is not valid; valid: a number of seconds > 0")
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in chosen if s not in SECTIONS]
    if bad or not chosen:
        p.error(f"--sections {args.sections!r}: unknown section {bad[0] if bad else '(none given)'!r}; "
                f"valid: {', '.join(SECTIONS)}")
    args.sections = [s for s in SECTIONS if s in chosen]
    import gpu_expectations

    names = [e.name for e in gpu_expectations.EXPECTATIONS]
    for name in args.break_expectation:
        if name not in names:
            p.error(f"--break-expectation {name!r}: no such expectation; valid: {', '.join(names)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.share_worker:
        return _share_worker(args)
    import torch

    import gpu_expectations
    import gpu_paper

    device = _device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    sizes = SMOKE if args.smoke else FULL
    check = Check(Path(args.json) if args.json else None, args.budget_s)

    def on_term(signum, frame):  # `timeout` or a scheduler ends the run: judge and write what was measured
        check.budget_s = 0.0
        raise Stopped(f"stopped by signal {signum} at {check.elapsed():.0f} s")

    signal.signal(signal.SIGTERM, on_term)
    check.result["mode"] = "smoke" if args.smoke else "full"
    check.result["sections_asked"] = args.sections
    check.result["command"] = "python3 bench/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv)
    check.section("env", lambda: env_section(device))
    check.section("ceiling", lambda: ceiling_section(device, sizes))
    ceiling = {p: check.result["ceiling"].get(f"{p}_flops_per_s") or float("nan") for p in ("fp32", "bf16")}

    def paper():
        if device.type == "cuda":  # the defect checks' cached blocks back to the device for the workers
            torch.cuda.empty_cache()
        deadline = time.time() + check.left() - (2 if args.smoke else 10)  # room to judge and write
        partial = lambda d: (check.result.__setitem__("paper", {**d, "partial": True}), check.save())  # noqa: E731
        return gpu_paper.paper_section(device, args.smoke, args.fashion_root, deadline, partial, args.paper_slots)

    run = {"defects": lambda: defects_section(device, sizes, check), "paper": paper,
           "archs": lambda: archs_section(device, sizes, ceiling, check),
           "sharing": lambda: sharing_section(device, sizes, args.smoke, check),
           "kernel": lambda: kernel_section(device, sizes), "inception_v3": lambda: inception_v3_section(device, sizes)}
    for name in args.sections:
        check.section(name, run[name])
        # the verdicts so far, with each section: a run killed outright still has them in its JSON
        check.result["expectations"] = gpu_expectations.judge(check.result, device.type, tuple(args.break_expectation))
        check.save()
    check.result["total_seconds"] = check.elapsed()
    rows = gpu_expectations.judge(check.result, device.type, tuple(args.break_expectation))
    check.result["expectations"] = rows
    check.save()
    # The JSON on stdout, as every bench prints it; then, for the reader of the log, the paper's
    # trials and the verdicts on stderr, last.
    print(json.dumps(_finite(check.result), indent=1, default=str), flush=True)
    if "paper" in args.sections:
        print(paper_table(check.result.get("paper")) + "\n", file=sys.stderr)
    print(f"gpu_check: {check.result['env'].get('gpu', device)}, sections {','.join(args.sections)}, "
          f"{check.elapsed():.0f} s{', JSON in ' + args.json if args.json else ''}", file=sys.stderr)
    print(gpu_expectations.table(rows), file=sys.stderr, flush=True)
    return 0


def paper_table(paper: dict[str, Any] | None) -> str:
    """The paper section's trials in one table (printed before the verdicts)."""
    if not paper or "trials" not in paper:
        return "paper: " + (json.dumps({k: v for k, v in paper.items() if k != "trials"}) if paper else "not run")
    out = [f"paper: {paper.get('data')}, {paper.get('slots')} at once, {paper.get('wall_seconds', 0):.0f} s",
           "| trial | stop | epochs | steps to fit | train % | test % | s/epoch (last) | flips bf16/fp32 |",
           "|---|---|---|---|---|---|---|---|"]
    for e in paper["trials"]:
        s, h = e.get("summary") or {}, e.get("history") or []
        last = h[-1] if h else {}
        ev = e.get("eval_precision") or {}
        pct = lambda v: "—" if v is None else f"{100 * v:.2f}"  # noqa: E731
        sec = last.get("train_seconds", 0) + last.get("eval_seconds", 0) if last else None
        out.append(f"| {e['trial']} | {e.get('stop')}{' (' + e['error'] + ')' if e.get('error') else ''} | "
                   f"{s.get('epochs', 0)} | {s.get('steps_to_fit') or '—'} | {pct(s.get('train_acc'))} | "
                   f"{pct(s.get('test_acc'))} | {'—' if sec is None else f'{sec:.1f}'} | "
                   f"{pct(ev.get('flipped_fraction'))} |")
    if paper.get("not_started"):
        out.append(f"not started (time): {', '.join(paper['not_started'])}")
    if paper.get("stopped"):
        out.append(f"stopped: {paper['stopped']}")
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
