"""Throughput of the rethink-dist trial loop against the plain PyTorch loop a researcher writes.

Both loops train the same model with the same SGD on the same CIFAR-10-shaped data, which this
bench writes itself in the exact CIFAR-10 python format (random uint8 images and labels: the
speed does not depend on the pixel values). Each epoch is one pass over the training set plus
the evaluations the randomization test needs: accuracy on the whole training set and on the
test set. Throughput is training images per wall second over whole epochs, evaluations
included. The two loops run in two separate processes, one epoch at a time, alternately (the
idle one waits on a pipe), so that both see the same machine load and neither inherits the
other's process settings.

(a) ours: ``rethink_dist.train.Trial`` (in-memory loader, ``run_epoch()``).
(b) baseline: a torchvision CIFAR10-style Dataset (PIL image, per-sample ``ToTensor``, centre
    crop 28, per-image standardisation), ``DataLoader(batch_size, shuffle, num_workers=2)`` for
    training and for each evaluation, ``torch.no_grad()`` evaluation at the training batch size.

Also reported: the model's training FLOPs per image (forward + backward, counted with
``torch.utils.flop_counter.FlopCounterMode``), the FLOP/s our training steps reach, the FLOP/s
of a plain fp32 2048 x 2048 matrix product measured in the same run between the epochs (the
ceiling), and a profile of our loop (seconds per phase and the most expensive operators).
The headline numbers take each loop's fastest epoch, the least disturbed on a shared machine;
the medians and every epoch are in the JSON too.

    .venv/bin/python bench/train.py --arch mlp_1x512 --json bench-train.json              # real-size epochs
    .venv/bin/python bench/train.py --arch all --cpu-sized --json bench-train.json        # on 2 CPU cores: 17 minutes

prints the JSON (one object per architecture under "results") and writes it to --json. Epochs
are CIFAR-10's real size (50,000 / 10,000 images) unless --steps or --cpu-sized shortens them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ARCHS = ("mlp_1x512", "mlp_3x512", "alexnet_small", "inception_small")
# CIFAR-10's sizes: the epochs are of the real size, 50,000 training and 10,000 test images, by
# default. Shorter epochs inflate the ratio (the baseline starts its DataLoader workers every epoch
# whatever its size): they are for a quick look (--steps) and for the conv nets on a CPU
# (--cpu-sized), whose real-size rounds take minutes (small AlexNet) to most of an hour (small Inception).
CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000
CPU_SIZED_STEPS = {"alexnet_small": 8, "inception_small": 4}  # --cpu-sized; the MLPs stay real-size
CROP = 28
MATMUL_N = 2048


class BenchError(Exception):
    """Bad input: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise BenchError(message)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(prog="bench/train.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", required=True, help=f"one of {', '.join(ARCHS)}, or 'all'")
    p.add_argument("--json", required=True, help="where to write the results (JSON)")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps per epoch, for shorter epochs (train images = steps x batch size, test "
                        "= a fifth of that); default: CIFAR-10's 50,000 / 10,000 images")
    p.add_argument("--cpu-sized", action="store_true",
                   help="shorter epochs for the conv nets only (" + ", ".join(f"{a} {s} steps" for a, s in
                   CPU_SIZED_STEPS.items()) + "): a real-size round of both loops takes about 4.5 minutes for "
                   "the small AlexNet and most of an hour for the small Inception on 2 CPU cores")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up epochs of each loop (default 1)")
    p.add_argument("--rounds", type=int, default=5, help="timed epochs of each loop, alternating (default 5)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the baseline (default 2)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--precision", default="fp32", help="our loop's precision: fp32 (default) | bf16 | auto")
    p.add_argument("--no-profile", action="store_true", help="skip the profile of our loop")
    a = p.parse_args(argv)
    if a.arch != "all" and a.arch not in ARCHS:
        raise BenchError(f"--arch {a.arch!r} is not valid; valid: {', '.join(ARCHS)}, all")
    for name in ("steps", "rounds", "batch_size"):
        v = getattr(a, name)
        if v is not None and v < 1:
            raise BenchError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if a.cpu_sized and a.steps is not None:
        raise BenchError(f"--cpu-sized and --steps {a.steps} contradict each other; give one of them")
    if a.warmup < 0:
        raise BenchError(f"--warmup must be >= 0, got {a.warmup}")
    if a.workers < 0:
        raise BenchError(f"--workers must be >= 0, got {a.workers}")
    if a.device not in ("auto", "cpu", "cuda"):
        raise BenchError(f"--device {a.device!r} is not valid; valid: auto, cpu, cuda")
    if a.precision not in ("fp32", "bf16", "auto"):
        raise BenchError(f"--precision {a.precision!r} is not valid; valid: fp32, bf16, auto")
    out = Path(a.json)
    if out.exists() and out.is_dir():
        raise BenchError(f"--json {a.json!r} is a folder; give a file path")
    if not out.resolve().parent.is_dir():
        raise BenchError(f"--json {a.json!r}: folder {str(out.resolve().parent)!r} does not exist")
    return a


# ---------------------------------------------------------------------------------- the data
def write_data(root: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """Random CIFAR-10-shaped data in the exact CIFAR-10 python format."""
    import numpy as np

    from rethink_dist.data.cifar import write_cifar10

    rng = np.random.default_rng(seed)
    write_cifar10(
        root,
        rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n_train),
        rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n_test),
    )


# ---------------------------------------------------------------------------------- (b) the plain loop
class CifarStyleDataset:
    """What torchvision.datasets.CIFAR10 does (a PIL image per sample, then the transform),
    reading the python batches itself: torchvision refuses files that are not the official
    ones (it checks their MD5 sums)."""

    def __init__(self, root: str, train: bool, transform: Any):
        import numpy as np

        folder = Path(root) / "cifar-10-batches-py"
        names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        data, targets = [], []
        for name in names:
            with open(folder / name, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            data.append(entry["data"] if "data" in entry else entry[b"data"])
            targets.extend(entry["labels"] if "labels" in entry else entry[b"labels"])
        self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))  # HWC
        self.targets = targets
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


class PerImageStandardize:
    """TensorFlow's per_image_standardization of one C x H x W tensor."""

    def __call__(self, x):
        return (x - x.mean()) / max(float(x.std(unbiased=False)), 1.0 / math.sqrt(x.numel()))


class Baseline:
    def __init__(self, arch: str, root: str, batch_size: int, workers: int, device: str):
        import torch
        from torchvision import transforms

        from rethink_dist.protocol import paper_lr
        from rethink_dist.models import create
        from rethink_dist.train import resolve_device

        self.device = resolve_device(device)
        tf = transforms.Compose([transforms.ToTensor(), transforms.CenterCrop(CROP), PerImageStandardize()])
        train_set = CifarStyleDataset(root, True, tf)
        test_set = CifarStyleDataset(root, False, tf)
        pin = self.device.type == "cuda"
        DL = torch.utils.data.DataLoader
        self.train_loader = DL(train_set, batch_size=batch_size, shuffle=True, num_workers=workers, pin_memory=pin)
        self.train_eval_loader = DL(train_set, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin)
        self.test_loader = DL(test_set, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin)
        torch.manual_seed(0)
        self.model = create(arch, (3, CROP, CROP), 10).to(self.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=paper_lr(arch), momentum=0.9)
        self.criterion = torch.nn.CrossEntropyLoss()
        self.num_train = len(train_set)

    def _sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def epoch(self) -> dict[str, float]:
        import torch

        t0 = time.perf_counter()
        self.model.train()
        running = 0.0
        for x, y in self.train_loader:
            x, y = x.to(self.device), y.to(self.device)
            self.optimizer.zero_grad()
            loss = self.criterion(self.model(x), y)
            loss.backward()
            self.optimizer.step()
            running += loss.item()
        self._sync()
        t1 = time.perf_counter()
        self.model.eval()
        acc = {}
        with torch.no_grad():
            for split, loader in (("train", self.train_eval_loader), ("test", self.test_loader)):
                correct = total = 0
                for x, y in loader:
                    x, y = x.to(self.device), y.to(self.device)
                    correct += (self.model(x).argmax(dim=1) == y).sum().item()
                    total += y.shape[0]
                acc[split] = correct / total
        t2 = time.perf_counter()
        return {"train_seconds": t1 - t0, "eval_seconds": t2 - t1, "seconds": t2 - t0, "images": self.num_train,
                "train_acc": acc["train"], "test_acc": acc["test"]}


# ---------------------------------------------------------------------------------- (a) our loop
class Ours:
    def __init__(self, arch: str, root: str, batch_size: int, device: str, precision: str):
        from rethink_dist.config import TrialConfig
        from rethink_dist.train import Trial

        cfg = TrialConfig.from_dict({
            "data": {"name": "cifar10", "root": root},
            "model": {"name": arch},
            "optim": {"epochs": 1_000_000, "batch_size": batch_size},
            "device": device, "precision": precision,
        })
        self.trial = Trial(cfg)

    def epoch(self) -> dict[str, float]:
        t0 = time.perf_counter()
        rec = self.trial.run_epoch()
        seconds = time.perf_counter() - t0
        return {"train_seconds": rec["train_seconds"], "eval_seconds": rec["eval_seconds"], "seconds": seconds,
                "images": self.trial.loader.num_train, "train_acc": rec["train_acc"], "test_acc": rec["test_acc"]}

    def profile(self, steps: int = 10, top: int = 10) -> dict[str, Any]:
        """Seconds per phase of a training step and of the evaluation, and the top operators."""
        import torch
        from torch.profiler import ProfilerActivity, profile

        t = self.trial
        dev = t.device

        def sync() -> None:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        phases = {"data": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
        gen = torch.Generator().manual_seed(12345)
        t.model.train()
        done = 0
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with profile(activities=acts, record_shapes=True) as prof:
            it = iter(t.loader.train_batches(t.config.optim.batch_size, gen))
            while done < steps:
                a = time.perf_counter()
                try:
                    x, y = next(it)
                except StopIteration:
                    it = iter(t.loader.train_batches(t.config.optim.batch_size, gen))
                    continue
                sync()
                b = time.perf_counter()
                loss = t.train_step_loss(x, y)
                sync()
                c = time.perf_counter()
                t.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                sync()
                d = time.perf_counter()
                t.optimizer.step()
                sync()
                e = time.perf_counter()
                for k, dt in zip(phases, (b - a, c - b, d - c, e - d)):
                    phases[k] += dt
                done += 1
        per_step = {k: v / steps for k, v in phases.items()}
        key = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
        ops = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: getattr(e, key), reverse=True)
        total = sum(getattr(e, key) for e in ops) or 1.0
        top_train = [{"op": e.key, "shapes": str(e.input_shapes)[:120], "ms_per_step": getattr(e, key) / 1e3 / steps,
                      "share": getattr(e, key) / total} for e in ops[:top]]
        with profile(activities=acts, record_shapes=True) as prof:
            a = time.perf_counter()
            t.evaluate()
            sync()
            eval_s = time.perf_counter() - a
        ops = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: getattr(e, key), reverse=True)
        total = sum(getattr(e, key) for e in ops) or 1.0
        top_eval = [{"op": e.key, "shapes": str(e.input_shapes)[:120], "ms": getattr(e, key) / 1e3,
                     "share": getattr(e, key) / total} for e in ops[:top]]
        return {"train_step_seconds_by_phase": per_step, "train_top_ops": top_train,
                "eval_seconds_profiled": eval_s, "eval_top_ops": top_eval}


def _worker(conn, kind: str, kwargs: dict[str, Any]) -> None:
    """A loop in its own process; runs one epoch per 'epoch' message."""
    t0 = time.perf_counter()
    loop = Ours(**kwargs) if kind == "ours" else Baseline(**kwargs)
    conn.send({"setup_seconds": time.perf_counter() - t0})
    while True:
        msg = conn.recv()
        if msg == "epoch":
            conn.send(loop.epoch())
        elif msg == "profile":
            conn.send(loop.profile())
        else:
            break


# ---------------------------------------------------------------------------------- the ceiling
def matmul_flops_per_s(device: Any, n: int = MATMUL_N, reps: int = 8) -> float:
    import torch

    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    best = math.inf
    for _ in range(3):
        sync()
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 * reps / best


def count_flops(arch: str, batch_size: int) -> tuple[float, float]:
    """(training FLOPs per image: forward + backward, forward FLOPs per image) of one step."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from rethink_dist.models import create

    model = create(arch, (3, CROP, CROP), 10)
    x = torch.randn(batch_size, 3, CROP, CROP)
    y = torch.randint(0, 10, (batch_size,))
    with FlopCounterMode(display=False) as fwd:
        with torch.no_grad():
            model.eval()
            model(x)
    with FlopCounterMode(display=False) as train:
        model.train()
        F.cross_entropy(model(x), y).backward()
    return train.get_total_flops() / batch_size, fwd.get_total_flops() / batch_size


# ---------------------------------------------------------------------------------- one architecture
def bench_arch(arch: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import multiprocessing as mp

    import torch

    from rethink_dist.train import resolve_device

    device = resolve_device(args.device)
    steps = args.steps or (CPU_SIZED_STEPS.get(arch) if args.cpu_sized else None)
    if steps is None:  # the real size
        n_train, n_test = CIFAR_TRAIN, CIFAR_TEST
    else:
        n_train = steps * args.batch_size
        n_test = max(args.batch_size, n_train // 5)
    root = tmp / f"{arch}-{n_train}"
    if not root.exists():
        write_data(root, n_train, n_test)
    train_flops, fwd_flops = count_flops(arch, args.batch_size)

    ctx = mp.get_context("spawn")
    loops = {
        "ours": dict(arch=arch, root=str(root), batch_size=args.batch_size, device=args.device, precision=args.precision),
        "baseline": dict(arch=arch, root=str(root), batch_size=args.batch_size, workers=args.workers, device=args.device),
    }
    procs, conns, setup = {}, {}, {}
    for kind, kw in loops.items():
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_worker, args=(child, kind, kw), daemon=False)
        p.start()
        procs[kind], conns[kind] = p, parent
        setup[kind] = parent.recv()["setup_seconds"]  # one at a time: setups do not overlap
    try:
        warm: dict[str, list[dict[str, float]]] = {kind: [] for kind in loops}
        for _ in range(args.warmup):  # the first epochs warm caches (and compile, if anything does)
            for kind in loops:
                conns[kind].send("epoch")
                warm[kind].append(conns[kind].recv())
        epochs: dict[str, list[dict[str, float]]] = {"ours": [], "baseline": []}
        matmul: list[float] = []
        for r in range(args.rounds):
            matmul.append(matmul_flops_per_s(device))
            order = ("ours", "baseline") if r % 2 == 0 else ("baseline", "ours")
            for kind in order:
                conns[kind].send("epoch")
                epochs[kind].append(conns[kind].recv())
        matmul.append(matmul_flops_per_s(device))
        prof = None
        if not args.no_profile:
            conns["ours"].send("profile")
            prof = conns["ours"].recv()
    finally:
        for kind in loops:
            try:
                conns[kind].send("quit")
            except (BrokenPipeError, OSError):
                pass
            procs[kind].join(timeout=60)
    for kind, p in procs.items():
        if p.exitcode != 0:
            raise RuntimeError(f"the {kind} loop's process ended with status {p.exitcode}")

    # The headline numbers take each loop's fastest epoch (and the fastest matrix product): on a
    # shared machine that is the estimate least disturbed by other work. Medians and every
    # epoch are reported too.
    def fastest(kind: str, key: str) -> float:
        return min(e[key] for e in epochs[kind])

    def ips(e: dict[str, float]) -> float:
        return e["images"] / (e["train_seconds"] + e["eval_seconds"])

    ours_ips = max(ips(e) for e in epochs["ours"])
    base_ips = max(ips(e) for e in epochs["baseline"])
    ratios = [ips(o) / ips(b) for o, b in zip(epochs["ours"], epochs["baseline"])]
    train_s, eval_s = fastest("ours", "train_seconds"), fastest("ours", "eval_seconds")
    flops_per_s = train_flops * n_train / train_s
    mm = max(matmul)
    return {
        "arch": arch,
        "ours_images_per_s": ours_ips,
        "baseline_images_per_s": base_ips,
        "ratio": ours_ips / base_ips,
        "ratio_median_of_rounds": statistics.median(ratios),
        "ratio_per_round": ratios,
        "ours_images_per_s_median": statistics.median(ips(e) for e in epochs["ours"]),
        "baseline_images_per_s_median": statistics.median(ips(e) for e in epochs["baseline"]),
        "train_flops_per_image": train_flops,
        "forward_flops_per_image": fwd_flops,
        "flops_per_s": flops_per_s,
        "matmul_flops_per_s": mm,
        "fraction_of_matmul": flops_per_s / mm,
        "eval_seconds": eval_s,
        "train_epoch_seconds": train_s,
        "eval_fraction_of_train_epoch": eval_s / train_s,
        "baseline_eval_seconds": fastest("baseline", "eval_seconds"),
        "baseline_train_epoch_seconds": fastest("baseline", "train_seconds"),
        "train_images": n_train,
        "real_size_epochs": n_train == CIFAR_TRAIN,  # False: shorter epochs (--steps), which inflate the ratio
        "test_images": n_test,
        "steps_per_epoch": math.ceil(n_train / args.batch_size),
        "setup_seconds": setup,
        "warmup_epochs": warm,
        "epochs": epochs,
        "matmul_flops_per_s_samples": matmul,
        "profile": prof,
    }


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except BenchError as e:
        print(f"bench/train.py: error: {e}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from machine import cpu_name

    from rethink_dist.errors import ConfigError
    from rethink_dist.train import resolve_device

    archs = list(ARCHS) if args.arch == "all" else [args.arch]
    try:
        resolve_device(args.device)  # the trial loop's own choice: refuse cuda without a GPU before any work
    except ConfigError as e:
        print(f"bench/train.py: error: {e}", file=sys.stderr)
        return 2
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        results = [bench_arch(a, args, Path(tmp)) for a in archs]
    out = {
        "command": "bench/train.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {
            "cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "device": "cuda: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else "cpu",
            "load_average_at_end": os.getloadavg(),
        },
        "data": "random uint8 images and labels written in the CIFAR-10 python format by this bench",
        "precision": args.precision,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "seconds": time.time() - started,
        "results": results,
    }
    text = json.dumps(out, indent=2)
    Path(args.json).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
