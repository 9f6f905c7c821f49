"""The paper on real images: the small AlexNet and the small Inception fitting Fashion-MNIST's
60,000 real training images with true labels, random labels and pixel corruptions, several trials
at once on one GPU, each until it fits its training set or its time runs out.

Run as a section of bench/gpu_check.py (``--sections paper``), which gives it its deadline; the
trials are worker processes of this file (``--worker``), one per trial, all on the one device, as
fractional ``resources.gpus`` place a sweep's trials on a GPU (a Ray trial is a process of its own
too; here no Ray is needed). Each worker runs the project's own trial: the config of
``sweeps/fashion.py`` (``trial()``: its protocol, the one docs/protocol.md argues), the Fashion-MNIST
reader, the corruption kernels and the in-memory loader through ``rethink_dist.train.Trial``, with
the loop's own device choices (bf16 autocast and channels_last on CUDA, cudnn.benchmark).

The protocol (rethink_dist/protocol.py, docs/protocol.md): SGD momentum 0.9, batch 128, the paper's
learning rates (0.01 small AlexNet, 0.1 small Inception) x 0.995 per epoch, no weight decay,
dropout or random crop; 28x28x3 input (the gray channel repeated: the paper's parameter counts);
"fitted" = 99% training accuracy, the trial stops there; at most the protocol's 450 epochs. A trial
also stops when its next epoch would end past the section's deadline ("time cap"): every trial's
JSON says which of the three ended it ("fitted", "epoch cap", "time cap").

Sizing (why these trials fit in about 4 minutes of an H100/H200, estimated, not measured: no GPU
has run this yet). An epoch is 60,000 training images (forward + backward) and the evaluation of
the whole training set and the test set (70,000 forwards). By FLOPs (FlopCounterMode, docs/cluster.md)
that is 60,000 x 143 MFLOP + 70,000 x 50 MFLOP = 12 TFLOP for the small AlexNet and 60,000 x 1,221
+ 70,000 x 408 MFLOP = 102 TFLOP for the small Inception. Small 28x28 convolutions reach a few
percent of an H200's ~990 TFLOP/s dense bf16 peak: at 30-60 TFLOP/s achieved, an Inception epoch is
2-3.5 s of the whole GPU and an AlexNet epoch 0.2-0.4 s (or its launch overheads, ~1-2 ms per
step of 469 steps, whichever is larger: the reason several trials share the GPU). The paper's
Figure 1a (Inception, CIFAR-10, the same schedule but x0.95 per epoch) fits true labels in about
5,000 steps (13 epochs) and random labels in about 15,000-20,000 (40-50 epochs); shuffled, random
and gaussian pixels in between. Measured on a 2-core AMD EPYC VM (2026-12-04, fp32, one
thread, `rethink-dist train --dataset fashion_mnist --arch alexnet_small --corruption labels
--level 1 --stop-when-fitted --fit-threshold 0.99` on the first 512 training / 128 test images of
the real files): the small AlexNet fits its 512 random labels at epoch 117 (468 steps, 18 minutes
there); MLP 1x512 needs 388 epochs (182,000 steps) for all 60,000 (docs/protocol.md). Steps to
fit random labels grow faster than the images, so the AlexNet random-label trial may need well
over 100 epochs of 469 steps: cheap per epoch, but the trial most likely to meet the time cap
after Inception's. So the Inception trials need of the order of 150 epochs in all,
300-500 s of the whole GPU, the AlexNet trials 50-100 s: more than the ~250 s the section gets
after the defect checks. Hence the order below (the ones the paper's claim rests on first: random
labels, then true labels, then the pixel corruptions, AlexNet's before Inception's), ``slots``
trials at a time (a queued trial starts when one ends, if at least ``min_start_s`` remain), and
the time cap that records a trial cut short instead of losing it. Where a random-label trial ends
by the time cap, its last training accuracy and curve are what the run shows, and the verdict
``paper_random_labels_fitted`` says "not met" with that accuracy.

Smoke (``--smoke`` of gpu_check, on the CPU): the same code on a few hundred images written as
Fashion-MNIST IDX files (the first images of the real files when given, else generated ones), two
epochs per trial, three trials at once.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# (architecture, corruption kind, level), in the order they start: what the paper's claim rests on first.
# The first ``slots`` (6) start at once: Table 1's four, and two cheap AlexNet pixel corruptions that
# leave the GPU mostly to the Inception trials; Inception's pixel corruptions wait for a free slot.
TRIALS_FULL = (
    ("inception_small", "labels", 1.0), ("alexnet_small", "labels", 1.0),
    ("inception_small", "none", 0.0), ("alexnet_small", "none", 0.0),
    ("alexnet_small", "random_pixels", 0.0), ("alexnet_small", "shuffled_pixels", 0.0),
    ("inception_small", "random_pixels", 0.0), ("alexnet_small", "gaussian", 0.0),
    ("inception_small", "shuffled_pixels", 0.0), ("inception_small", "gaussian", 0.0),
)
TRIALS_SMOKE = (("inception_small", "labels", 1.0), ("alexnet_small", "labels", 1.0), ("alexnet_small", "none", 0.0))
FULL = {"trials": TRIALS_FULL, "slots": 6, "n_train": None, "n_test": None, "epochs": None, "min_start_s": 45.0}
SMOKE = {"trials": TRIALS_SMOKE, "slots": 3, "n_train": 192, "n_test": 64, "epochs": 2, "min_start_s": 0.0}
DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"


def _fashion_sweep():
    """sweeps/fashion.py as a module: its trial() is the product's Fashion-MNIST config."""
    spec = importlib.util.spec_from_file_location("rethink_sweep_fashion", REPO / "sweeps" / "fashion.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def trial_config(arch: str, kind: str, level: float, root: str, device: str, epochs: int | None = None):
    """The sweep's config of this trial (sweeps/fashion.py: trial(), its GPU resources), on ``device``."""
    fashion = _fashion_sweep()
    cfg = fashion.trial(arch, kind, level, data_root=root, resources=fashion.GPU)
    changes: dict[str, Any] = {"device": device}
    if epochs is not None:
        changes["optim.epochs"] = epochs
    return cfg.replace(**changes)


def label(arch: str, kind: str, level: float) -> str:
    name = {"none": "true labels", "shuffled_pixels": "shuffled pixels", "random_pixels": "random pixels",
            "gaussian": "gaussian"}.get(kind) or ("random labels" if level == 1 else f"labels p={level:g}")
    return f"{arch} / {name}"


# ------------------------------------------------------------------------------------ worker
def _emit(tag: str, obj: Any) -> None:
    print(tag, json.dumps(obj, default=str), flush=True)


def eval_precision(trial) -> dict[str, Any]:
    """On a real trial: its training-set predictions evaluated in bf16 autocast (as the loop
    evaluates on CUDA) and in float32 with TF32 off (the reference): the fraction that flip."""
    import torch

    was, tf32 = trial.bf16, torch.backends.cudnn.allow_tf32
    preds = {}
    try:
        with torch.inference_mode():
            trial.model.eval()
            for name, bf16 in (("bf16", True), ("fp32", False)):
                trial.bf16 = bf16
                torch.backends.cudnn.allow_tf32 = bf16  # the fp32 reference without TF32 convolutions
                preds[name] = trial.correct(trial.loader.eval_batches("train"), topk=1)
    finally:
        trial.bf16, torch.backends.cudnn.allow_tf32 = was, tf32
    return {"train_acc_bf16_eval": float(preds["bf16"].float().mean()),
            "train_acc_fp32_eval": float(preds["fp32"].float().mean()),
            "flipped_fraction": float((preds["bf16"] != preds["fp32"]).float().mean())}


def worker(args: argparse.Namespace) -> int:
    """One trial: its epochs until fitted, the epoch cap or the deadline; one JSON line per event."""
    t_start = time.time()
    import torch

    if args.device == "cpu":
        torch.set_num_threads(1)
    from rethink_dist.train import Trial

    spec = json.loads(args.spec)
    cfg = trial_config(spec["arch"], spec["kind"], spec["level"], args.root, args.device, spec.get("epochs"))
    trial = Trial(cfg, device=args.device)
    _emit("START", {"config": trial.config.to_flat(), "meta": trial.meta, "setup_seconds": time.time() - t_start,
                    "pid": os.getpid()})
    last = 0.0
    stop = None
    while not trial.done:
        if time.time() + last > args.deadline:
            stop = "time cap"
            break
        t = time.perf_counter()
        rec = trial.run_epoch()
        last = time.perf_counter() - t
        _emit("EPOCH", rec)
    if stop is None:
        stop = "fitted" if trial.steps_to_fit is not None else "epoch cap"
    ev = None
    if trial.epoch and time.time() + last < args.deadline + 20:  # two evaluations of the training set: < an epoch
        ev = eval_precision(trial)
    _emit("DONE", {"summary": trial.summary(), "stop": stop, "eval_precision": ev,
                   "wall_seconds": time.time() - t_start})
    return 0


# ------------------------------------------------------------------------------------ section
def smoke_root(root: str | None, n_train: int, n_test: int, folder: Path) -> tuple[str, str]:
    """A small Fashion-MNIST folder for the smoke run: the first images of ``root``, else generated."""
    import numpy as np

    from rethink_dist.data.fashion_mnist import read_fashion_mnist, write_fashion_mnist

    if root and Path(root).is_dir():
        ds = read_fashion_mnist(root)
        tr_x, tr_y, te_x, te_y = ds.train_x[:n_train, ..., 0], ds.train_y[:n_train], ds.test_x[:n_test, ..., 0], \
            ds.test_y[:n_test]
        what = f"the first {n_train} / {n_test} images of {root}"
    else:
        rng = np.random.default_rng(0)
        tr_x, te_x = (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for n in (n_train, n_test))
        tr_y, te_y = (rng.integers(0, 10, n) for n in (n_train, n_test))
        what = f"{n_train} / {n_test} generated images ({root or 'no folder'} not found)"
    write_fashion_mnist(folder, tr_x, tr_y, te_x, te_y)
    return str(folder), what


def paper_section(device, smoke: bool, root: str | None, deadline: float, save: Callable[[dict], None],
                  slots: int | None = None) -> dict[str, Any]:
    """Run the trials as worker processes until the deadline (time.time()); ``save(partial)`` is
    called as results arrive, so a run cut short keeps what was measured."""
    sizes = SMOKE if smoke else FULL
    slots = slots or sizes["slots"]
    tmp = tempfile.TemporaryDirectory(prefix="rethink-paper-")
    try:
        if smoke:
            root, data_note = smoke_root(root, sizes["n_train"], sizes["n_test"], Path(tmp.name) / "fashion")
        else:
            root = root or DEFAULT_ROOT
            data_note = f"all of {root}"
            if not Path(root).is_dir():
                raise FileNotFoundError(f"Fashion-MNIST folder {root!r} not found; give --fashion-root DIR with "
                                        "the four .gz files")
        return _run_trials(device, sizes, slots, root, data_note, deadline, save)
    finally:
        tmp.cleanup()


def _run_trials(device, sizes, slots, root, data_note, deadline, save) -> dict[str, Any]:
    out: dict[str, Any] = {"data": data_note, "slots": slots, "device": str(device),
                           "seconds_given": deadline - time.time(), "trials": []}
    queue = [{"arch": a, "kind": k, "level": lv, "epochs": sizes["epochs"]} for a, k, lv in sizes["trials"]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    sel = selectors.DefaultSelector()
    running: dict[Any, dict[str, Any]] = {}
    t0 = time.time()

    def start(spec: dict[str, Any]) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--device", device.type, "--root", root,
               "--deadline", repr(deadline), "--spec", json.dumps(spec)]
        # stderr to a file: a pipe nobody reads until the end would block a worker that warns a lot
        err = tempfile.TemporaryFile(mode="w+")
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=str(REPO))
        p.err_file = err
        entry = {"trial": label(spec["arch"], spec["kind"], spec["level"]), "arch": spec["arch"], "kind": spec["kind"],
                 "level": spec["level"], "started_at_s": time.time() - t0, "history": [], "stop": None}
        out["trials"].append(entry)
        running[p] = entry
        sel.register(p.stdout, selectors.EVENT_READ, p)

    def finish(p) -> None:
        entry = running.pop(p)
        sel.unregister(p.stdout)
        p.wait(30)
        entry["ended_at_s"] = time.time() - t0
        p.err_file.seek(0)
        err = p.err_file.read()[-4000:]
        p.err_file.close()
        if entry.get("killed") and entry["stop"] is None:  # still in an epoch long past the deadline
            entry["stop"] = "time cap"
            entry["note"] = "ended by the section mid-epoch: its epoch would have ended long past the deadline"
        elif entry["stop"] is None and p.returncode in (-15, -9):  # ended with the run (timeout signals the group)
            entry["stop"] = "time cap"
            entry["note"] = f"ended by signal {-p.returncode} with the run"
        elif entry["stop"] is None:  # died without its DONE line
            entry["stop"] = "error"
            entry["error"] = (err.strip().splitlines() or [f"exit code {p.returncode}"])[-1]
        if entry["history"] and "summary" not in entry:
            from rethink_dist.records import summarize

            entry["summary"] = summarize(entry["history"])

    try:
        _loop(out, queue, running, sel, slots, sizes, deadline, save, start, finish)
    except Exception as e:  # noqa: BLE001 - stopped (a signal) or failed: keep what the trials measured
        out["stopped"] = f"{type(e).__name__}: {e}"
    finally:  # no worker outlives the section
        for p in list(running):
            if p.poll() is None:
                running[p]["killed"] = True
                p.kill()
            finish(p)
    out["not_started"] = [label(s["arch"], s["kind"], s["level"]) for s in queue]
    out["wall_seconds"] = time.time() - t0
    images = sum(e.get("meta", {}).get("num_train", 0) * len(e["history"]) for e in out["trials"])
    out["train_images"] = images
    out["aggregate_train_images_per_s"] = images / out["wall_seconds"] if out["wall_seconds"] > 0 else None
    return out


def _loop(out, queue, running, sel, slots, sizes, deadline, save, start, finish) -> None:
    last_save = 0.0
    while queue and len(running) < slots:
        start(queue.pop(0))
    while running:
        for key, _ in sel.select(timeout=2.0):
            p = key.data
            line = p.stdout.readline()
            if not line:
                finish(p)
                if queue and deadline - time.time() > sizes["min_start_s"]:
                    start(queue.pop(0))
                continue
            tag, _, body = line.partition(" ")
            entry = running[p]
            if tag == "EPOCH":
                entry["history"].append(json.loads(body))
            elif tag == "START":
                entry.update(json.loads(body))
            elif tag == "DONE":
                entry.update(json.loads(body))
        if time.time() > deadline + 60:  # a worker past its deadline by more than an epoch's grace: end it
            for p in list(running):
                if not running[p].get("killed"):
                    running[p]["killed"] = True
                    p.kill()
        if time.time() - last_save > 5:
            last_save = time.time()
            save(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="a worker of the GPU check's paper section (run by bench/gpu_check.py)")
    p.add_argument("--worker", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--root", required=True)
    p.add_argument("--deadline", type=float, required=True)
    p.add_argument("--spec", required=True)
    args = p.parse_args(argv)
    return worker(args)


if __name__ == "__main__":
    raise SystemExit(main())
