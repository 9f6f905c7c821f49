"""The fast trial loop computes what the plain loop computes.

Checks, on real (small) data: the loop trains; an epoch of the Trial (fused SGD, index gathers,
whole-batch preprocessing) moves the weights exactly as a textbook SGD loop over the same
batches does; evaluation (inference mode, large batches) gives the accuracies a per-sample
reference computes; resuming from a state_dict reproduces the uninterrupted history; and
bench/train.py refuses bad input with one line and exit status 2, and runs end to end.
No timing is asserted here: speed is measured by bench/train.py.
"""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rethink_dist.config import TrialConfig
from rethink_dist.data.preprocess import preprocess, whiten
from rethink_dist.train import Trial, _derive_seed

ROOT = Path(__file__).resolve().parents[1]
TIMING_KEYS = {"images_per_s", "train_seconds", "eval_seconds", "seconds"}


def digits_config(arch: str = "mlp_1x512", epochs: int = 4, max_train: int | None = None, **extra) -> TrialConfig:
    d = {"data": {"name": "digits", "max_train": max_train}, "model": {"name": arch}, "optim": {"epochs": epochs}, "device": "cpu"}
    for section, values in extra.items():
        d.setdefault(section, {}).update(values)
    return TrialConfig.from_dict(d)


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in rec.items() if k not in TIMING_KEYS} for rec in history]


def test_loop_trains_on_digits():
    trial = Trial(digits_config(epochs=6, optim={"lr": 0.05}))
    while not trial.done:
        trial.run_epoch()
    first, last = trial.history[0], trial.history[-1]
    assert last["train_loss"] < first["train_loss"]
    assert last["train_acc"] > 0.8 and last["test_acc"] > 0.7
    assert last["step"] == 6 * 12  # 1,437 images at batch 128: 12 steps per epoch


@pytest.mark.parametrize("arch,reg", [("mlp_1x512", {"weight_decay": 1e-3}),
                                      ("alexnet_small", {"weight_decay": 5e-4, "augment": True})])
def test_epoch_matches_textbook_sgd(arch, reg):
    """One epoch of the Trial == plain SGD (momentum, decay on weights only) on the same batches."""
    trial = Trial(digits_config(arch, epochs=1, max_train=600, reg=reg))
    cfg = trial.config
    ref = copy.deepcopy(trial.model)
    decay = [p for p in ref.parameters() if p.ndim > 1]
    no_decay = [p for p in ref.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.reg.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=cfg.optim.lr, momentum=cfg.optim.momentum, foreach=False)
    # The same batches the Trial's epoch 0 draws: same generator seed, same loader.
    gen = torch.Generator().manual_seed(_derive_seed(cfg.seed, 0, 1))
    batches = [(x.clone(), y.clone()) for x, y in trial.loader.train_batches(cfg.optim.batch_size, gen)]
    record = trial.run_epoch()
    ref.train()
    losses = []
    for x, y in batches:
        loss = F.cross_entropy(ref(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert record["train_loss"] == pytest.approx(float(np.mean(losses)), rel=1e-4)
    for (name, p), q in zip(trial.model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=f"parameter {name} differs")


def reference_accuracies(trial: Trial) -> dict[str, float]:
    """Accuracies computed one image at a time, from the raw arrays, without the loader's caches."""
    from rethink_dist.data import load
    from rethink_dist.data.memory import corrupt_dataset

    cfg = trial.config
    ds = load(cfg.data.name, cfg.data.root).subset_train(cfg.data.max_train)
    arrays = corrupt_dataset(ds, cfg.corruption)
    model = copy.deepcopy(trial.model).eval()

    def predict(images: np.ndarray) -> tuple[torch.Tensor, list[list[int]]]:
        preds, top5 = [], []
        with torch.no_grad():
            for start in range(0, len(images), 7):  # small odd batches, unlike the loop's
                x = torch.from_numpy(images[start : start + 7]).permute(0, 3, 1, 2)  # N x C x H x W uint8
                logits = model(preprocess(x, cfg.data.image_size))
                preds += logits.argmax(1).tolist()
                top5 += logits.topk(5, dim=1).indices.tolist()
        return torch.tensor(preds), top5

    tr_pred, _ = predict(arrays.train_x)
    te_pred, te_top5 = predict(arrays.test_x)
    tr_ok = tr_pred.numpy() == arrays.train_y
    changed = arrays.changed
    return {
        "train_acc": float(tr_ok.mean()),
        "train_acc_clean": float(tr_ok[~changed].mean()),
        "train_acc_corrupted": float(tr_ok[changed].mean()),
        "test_acc": float((te_pred.numpy() == arrays.test_y).mean()),
        "test_top5": float(np.mean([y in t for y, t in zip(arrays.test_y, te_top5)])),
    }


@pytest.mark.parametrize("arch", ["mlp_3x512", "inception_small"])
def test_evaluation_matches_per_image_reference(arch):
    trial = Trial(digits_config(arch, epochs=1, max_train=200, corruption={"kind": "labels", "level": 0.5}))
    trial.run_epoch()  # trained a little, so the predictions are not all one class
    got = trial.evaluate()
    want = reference_accuracies(trial)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1.5 / 200), key  # at most a near-tie flips


def test_evaluation_leaves_no_autograd_state_and_training_continues():
    trial = Trial(digits_config(epochs=2))
    trial.run_epoch()
    before = [p.detach().clone() for p in trial.model.parameters()]
    trial.evaluate()
    assert all(torch.equal(a, b) for a, b in zip(before, trial.model.parameters()))
    assert trial.model.training is False
    rec = trial.run_epoch()  # after an inference-mode evaluation, training still works
    assert rec["epoch"] == 2 and np.isfinite(rec["train_loss"])


@pytest.mark.parametrize("arch,reg", [("mlp_1x512", {}), ("alexnet_small", {"augment": True, "dropout": 0.2})])
def test_resume_from_state_dict_gives_identical_history(arch, reg):
    cfg = digits_config(arch, epochs=4, max_train=256, reg=reg)
    whole = Trial(cfg)
    while not whole.done:
        whole.run_epoch()

    first = Trial(cfg)
    first.run_epoch()
    first.run_epoch()
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)  # through bytes, as a checkpoint on disk would be
    buf.seek(0)
    resumed = Trial(cfg)
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    while not resumed.done:
        resumed.run_epoch()

    assert without_timing(resumed.history) == without_timing(whole.history)
    for p, q in zip(resumed.model.parameters(), whole.model.parameters()):
        assert torch.equal(p, q)


def test_whiten_is_tensorflow_per_image_standardization():
    x = torch.rand(5, 3, 6, 6) * 255
    x[0] = 7.0  # a constant image: std 0, divided by 1/sqrt(n) instead
    got = whiten(x)
    flat = x.reshape(5, -1).double().numpy()
    mean = flat.mean(1, keepdims=True)
    adj = np.maximum(flat.std(1, keepdims=True), 1.0 / np.sqrt(flat.shape[1]))
    np.testing.assert_allclose(got.reshape(5, -1).numpy(), (flat - mean) / adj, rtol=1e-5, atol=1e-5)


def run_bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "train.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("args", [
    ["--arch", "resnet50", "--json", "out.json"],
    ["--arch", "mlp_1x512", "--json", "out.json", "--steps", "0"],
    ["--arch", "mlp_1x512"],
    ["--arch", "mlp_1x512", "--json", "/no/such/folder/out.json"],
    ["--arch", "alexnet_small", "--json", "out.json", "--cpu-sized", "--steps", "4"],
    ["--arch", "mlp_1x512", "--json", "out.json", "--warmup", "-1"],
])
def test_bench_refuses_bad_input_with_one_line(args):
    r = run_bench(*args, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0], r.stderr
    assert r.stdout == ""


def test_bench_runs_end_to_end(tmp_path):
    out = tmp_path / "bench.json"
    r = run_bench("--arch", "mlp_1x512", "--json", str(out), "--steps", "2", "--rounds", "1", "--batch-size", "64",
                  "--warmup", "0")
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert json.loads(r.stdout) == doc
    (res,) = doc["results"]
    for key in ("ours_images_per_s", "baseline_images_per_s", "ratio", "train_flops_per_image", "flops_per_s",
                "matmul_flops_per_s", "eval_seconds", "train_epoch_seconds"):
        assert res[key] > 0, key
    # MLP 1x512 on 3x28x28: forward 2*(2352*512 + 512*10) multiply-adds per image; the backward
    # pass computes the first layer's weight gradient only (no input gradient) and both of the
    # second layer's: 2*2352*512 + 2*2*512*10.
    fwd = 2 * (2352 * 512 + 512 * 10)
    assert res["train_flops_per_image"] == fwd + 2 * 2352 * 512 + 4 * 512 * 10
    assert res["train_images"] == 128 and res["test_images"] == 64
    assert res["epochs"]["ours"][0]["images"] == 128
    assert res["warmup_epochs"] == {"ours": [], "baseline": []}  # --warmup 0
    assert res["profile"]["train_top_ops"]
    # The docs' table is generated from this JSON by bench/table.py.
    t = subprocess.run([sys.executable, str(ROOT / "bench" / "table.py"), "train", str(out)], capture_output=True,
                       text=True, timeout=60)
    assert t.returncode == 0, t.stderr
    row = next(line for line in t.stdout.splitlines() if line.startswith("| mlp_1x512 |"))
    assert f"| 128 / 64 | {res['ours_images_per_s']:,.0f} | {res['baseline_images_per_s']:,.0f} |" in row
    assert f"{res['ratio']:.1f} / {res['ratio_median_of_rounds']:.1f}" in row
    bad = subprocess.run([sys.executable, str(ROOT / "bench" / "table.py"), "train", str(tmp_path / "none.json")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_per_sample_records_agree_with_the_accuracies_and_survive_a_resume():
    """sample_records: first-fit epochs and forgetting events from the whole-training-set evaluation."""
    import numpy as np

    from rethink_dist.config import TrialConfig
    from rethink_dist.train import Trial

    cfg = TrialConfig.from_dict({"corruption": {"kind": "labels", "level": 0.5, "seed": 3}, "optim": {"epochs": 6},
                                 "data": {"max_train": 600}, "sample_records": True})
    trial = Trial(cfg)
    forgotten_so_far = []
    while not trial.done:
        rec = trial.run_epoch()
        a = trial.samples.arrays(trial.loader.changed)
        fitted = a["first_fit_epoch"] >= 0
        changed = a["label_changed"]
        assert fitted.mean() == pytest.approx(rec["train_acc"])  # fitted now <=> classified as its label now
        assert fitted[changed].mean() == pytest.approx(rec["train_acc_corrupted"])
        assert fitted[~changed].mean() == pytest.approx(rec["train_acc_clean"])
        forgotten_so_far.append(int(a["forgettings"].sum()))
        if trial.epoch == 3:
            import copy

            middle = copy.deepcopy(trial.state_dict())  # (its model tensors are the live ones)
    final = trial.samples.arrays(trial.loader.changed)
    assert changed.sum() == trial.meta["labels_changed"] and 0 < changed.sum() < 600
    assert forgotten_so_far[-1] > 0 and final["forgettings"].max() >= 1  # MLPs forget random labels too
    # The fraction fitted for good by epoch e is that epoch's accuracy wherever nothing was forgotten after e.
    for e, rec in enumerate(trial.history, start=1):
        by_e = ((final["first_fit_epoch"] >= 1) & (final["first_fit_epoch"] <= e)).mean()
        if forgotten_so_far[e - 1] == forgotten_so_far[-1]:
            assert by_e == pytest.approx(rec["train_acc"]), e
        else:
            assert by_e <= rec["train_acc"] + 1e-12, e
    # Resumed from epoch 3's state: the same records as the uninterrupted run.
    again = Trial(cfg)
    again.load_state_dict(middle)
    while not again.done:
        again.run_epoch()
    other = again.samples.arrays(again.loader.changed)
    for k in final:
        assert np.array_equal(final[k], other[k]), k


def test_conv_trial_gets_channels_last_batches_without_a_copy():
    """A channels-last model's batches come from a channels-last cache: the gathered training batch and
    the evaluation slices are channels-last already (Trial.model_input returns them as they are), with the
    values of the N x C x H x W path; an MLP's loader keeps the plain layout (its Flatten would copy)."""
    conv = Trial(digits_config("alexnet_small", epochs=1, max_train=300))
    mlp = Trial(digits_config("mlp_1x512", epochs=1, max_train=300))
    assert conv.channels_last and conv.loader.channels_last and not mlp.loader.channels_last
    torch.testing.assert_close(conv.loader.train_eval, mlp.loader.train_eval, rtol=0, atol=0)
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    for (x, y), (x_ref, y_ref) in zip(conv.loader.train_batches(64, gen()), mlp.loader.train_batches(64, gen())):
        assert x.is_contiguous(memory_format=torch.channels_last) and conv.model_input(x) is x
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    for x, _ in conv.loader.eval_batches("test"):
        assert conv.model_input(x) is x
    rec = conv.run_epoch()
    assert 0.0 <= rec["train_acc"] <= 1.0 and np.isfinite(rec["train_loss"])
