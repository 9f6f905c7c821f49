"""The shipped sweep files build the paper's grids: every Table 1 cell and figure series is there once."""

from collections import Counter
from pathlib import Path

import numpy as np

from rethink_dist.protocol import paper_weight_decay
from rethink_dist.data.cifar import write_cifar10
from rethink_dist.sweep import load_sweep

REPO = Path(__file__).resolve().parents[1]


def _cells(sweep):
    out = []
    for t in sweep.trials:
        c = t.config
        out.append((c["model"]["name"], c["reg"]["batch_norm"], c["reg"]["augment"], c["reg"]["weight_decay"],
                    c["reg"]["dropout"], c["corruption"]["kind"], c["corruption"]["level"],
                    c["stop"]["stop_when_fitted"]))
    return out


def test_quick_sweep_grid():
    sweep = load_sweep(REPO / "sweeps" / "quick.py")
    assert sweep.name == "quick" and len(sweep.trials) == 27
    assert len({t.trial_id for t in sweep.trials}) == 27
    cells = _cells(sweep)
    for arch in ("mlp_1x512", "mlp_3x512", "alexnet_small"):
        mine = [(kind, level) for a, _, _, _, _, kind, level, _ in cells if a == arch]
        assert sorted(mine) == sorted([("none", 0.0), ("labels", 0.2), ("labels", 0.4), ("labels", 0.6),
                                       ("labels", 0.8), ("labels", 1.0), ("shuffled_pixels", 0.0),
                                       ("random_pixels", 0.0), ("gaussian", 0.0)]), arch
    assert all(c[-1] for c in cells)  # each trains until it fits
    assert {t.config["data"]["name"] for t in sweep.trials} == {"digits"}
    assert {t.config["optim"]["epochs"] for t in sweep.trials} == {800}


def _write_tiny_cifar(root: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    y = np.arange(20) % 10
    return write_cifar10(root, x, y, x[:10], y[:10])


def test_full_paper_grid_covers_table1_and_figures(tmp_path, monkeypatch):
    monkeypatch.delenv("RETHINK_IMAGENET_BETON", raising=False)
    root = tmp_path / "cifar10"
    _write_tiny_cifar(root)
    sweep = load_sweep(REPO / "sweeps" / "full_paper.py", data_root=str(root))
    cells = _cells(sweep)
    assert len(cells) == len(set(cells)) == 61  # every experiment once, shared between figures
    assert all(t.config["data"]["name"] == "cifar10" for t in sweep.trials)
    assert all(t.config["resources"]["gpus"] == 0.25 for t in sweep.trials)
    s = set(cells)
    # Table 1: 5 networks x (crop on/off) x (weight decay on/off), plus random labels without regularizers
    for arch, bn in (("inception_small", True), ("inception_small", False), ("alexnet_small", True),
                     ("mlp_3x512", True), ("mlp_1x512", True)):
        for augment in (True, False):
            for wd in (paper_weight_decay(arch), 0.0):
                assert (arch, bn, augment, wd, 0.0, "none", 0.0, False) in s, (arch, bn, augment, wd)
        assert (arch, bn, False, 0.0, 0.0, "labels", 1.0, False) in s, arch
    # Figure 1a: Inception on every kind of corruption
    for kind, level in (("none", 0.0), ("labels", 1.0), ("shuffled_pixels", 0.0), ("random_pixels", 0.0),
                        ("gaussian", 0.0)):
        assert ("inception_small", True, False, 0.0, 0.0, kind, level, False) in s, kind
    # Figures 1b and 1c: three networks at p = 0.0 ... 1.0, each stopped once it fits
    fitted = Counter(c[0] for c in cells if c[-1])
    assert fitted == {"inception_small": 11, "alexnet_small": 11, "mlp_1x512": 11}
    for arch in ("inception_small", "alexnet_small", "mlp_1x512"):
        levels = sorted(c[6] for c in cells if c[-1] and c[0] == arch)
        assert levels == [round(0.1 * i, 1) for i in range(11)]


def test_full_paper_adds_imagenet_when_its_betons_exist(tmp_path, monkeypatch):
    root = tmp_path / "cifar10"
    _write_tiny_cifar(root)
    beton = tmp_path / "imagenet"
    beton.mkdir()
    monkeypatch.setenv("RETHINK_IMAGENET_BETON", str(beton))
    sweep = load_sweep(REPO / "sweeps" / "full_paper.py", data_root=str(root))
    imagenet = [t.config for t in sweep.trials if t.config["data"]["name"] == "imagenet"]
    assert len(sweep.trials) == 61 + 6 and len(imagenet) == 6
    assert all(c["model"]["name"] == "inception_v3" and c["data"]["loader"] == "ffcv" for c in imagenet)
    assert all(c["resources"]["ddp_workers"] == 8 and c["resources"]["gpus"] == 1.0 for c in imagenet)
    settings = Counter((c["reg"]["augment"], c["reg"]["dropout"] > 0, c["reg"]["weight_decay"] > 0,
                        c["corruption"]["level"]) for c in imagenet)
    # Table 2's four rows on true labels; random labels without and with every regularizer
    assert settings == {(True, True, True, 0.0): 1, (True, False, False, 0.0): 1, (False, False, True, 0.0): 1,
                        (False, False, False, 0.0): 1, (False, False, False, 1.0): 1, (True, True, True, 1.0): 1}


def test_fashion_sweep_grid(monkeypatch):
    """Figures 1a-1c for MLP 1x512 and Table 1's MLP rows by default; the other sections when asked."""
    monkeypatch.delenv("RETHINK_FASHION_SECTIONS", raising=False)
    sweep = load_sweep(REPO / "sweeps" / "fashion.py")
    cells = _cells(sweep)
    assert sweep.name == "fashion" and len(cells) == len(set(cells)) == 13
    assert {t.config["data"]["name"] for t in sweep.trials} == {"fashion_mnist"}
    assert {t.config["data"]["channels"] for t in sweep.trials} == {1}  # the MLPs see the 784 gray pixels
    from rethink_dist import protocol

    assert {(t.flat()["optim.lr"], t.config["optim"]["lr_decay"], t.config["optim"]["epochs"],
             t.config["stop"]["fit_threshold"]) for t in sweep.trials} == {
        (protocol.FASHION_MLP_LR, protocol.FASHION_LR_DECAY, protocol.FASHION_EPOCHS, protocol.FASHION_FIT_THRESHOLD)}
    assert all(c[-1] for c in cells)  # every trial stops once fitted
    mlp1 = sorted((kind, level) for a, _, _, wd, _, kind, level, _ in cells if a == "mlp_1x512" and wd == 0)
    assert mlp1 == sorted([("none", 0.0), ("labels", 0.2), ("labels", 0.4), ("labels", 0.6), ("labels", 0.8),
                           ("labels", 1.0), ("shuffled_pixels", 0.0), ("random_pixels", 0.0), ("gaussian", 0.0)])
    s = set(cells)
    for arch in ("mlp_1x512", "mlp_3x512"):  # Table 1: weight decay on and off, random labels without
        for wd in (0.0, paper_weight_decay(arch)):
            assert (arch, True, False, wd, 0.0, "none", 0.0, True) in s
        assert (arch, True, False, 0.0, 0.0, "labels", 1.0, True) in s
    # The longest trials first: random labels lead.
    assert [c[5:7] for c in cells[:2]] == [("labels", 1.0), ("labels", 1.0)]

    monkeypatch.setenv("RETHINK_FASHION_SECTIONS", "mlp3_levels,convnets")
    more = load_sweep(REPO / "sweeps" / "fashion.py")
    cells = _cells(more)
    assert sorted(c[6] for c in cells if c[0] == "mlp_3x512") == [0.2, 0.4, 0.6, 0.8]
    conv = [t.config for t in more.trials if not t.config["model"]["name"].startswith("mlp")]
    assert conv and all(c["data"]["channels"] == 3 and c["resources"]["gpus"] == 0.25 for c in conv)
    assert {(c["model"]["name"], c["reg"]["batch_norm"]) for c in conv} == {
        ("inception_small", True), ("inception_small", False), ("alexnet_small", True)}
    monkeypatch.setenv("RETHINK_FASHION_SECTIONS", "all")
    assert len(load_sweep(REPO / "sweeps" / "fashion.py").trials) == 13 + 4 + 3 + 19 + 1


def test_fashion_sweep_unknown_section_is_one_line(monkeypatch, capsys):
    from rethink_dist.cli import main

    monkeypatch.setenv("RETHINK_FASHION_SECTIONS", "figure1,tabel1")
    code = main(["sweep", str(REPO / "sweeps" / "fashion.py"), "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "unknown section 'tabel1'" in err and "valid: all, figure1, table1" in err


def test_fractional_gpus_are_not_given_to_data_parallel_trials(tmp_path):
    """--gpus-per-trial 0.25 shares GPUs among single-process trials; a data-parallel trial keeps
    whole GPUs (NCCL refuses two ranks on one GPU)."""
    beton = tmp_path / "imagenet"
    beton.mkdir()
    path = tmp_path / "mixed.py"
    path.write_text(f"""
from rethink_dist.config import imagenet_trial
NAME = "mixed"
def trials(data_root=None):
    return [{{"model": {{"name": "mlp_1x512"}}}}, imagenet_trial({str(beton)!r}, augment=False, dropout=False,
                                                                  weight_decay=False)]
""")
    sweep = load_sweep(path, resources={"gpus": 0.25})
    gpus = {t.config["model"]["name"]: t.config["resources"]["gpus"] for t in sweep.trials}
    assert gpus == {"mlp_1x512": 0.25, "inception_v3": 1.0}
    assert load_sweep(path, resources={"gpus": 2})  # whole GPUs apply to both


def test_a_trial_uses_a_gpu_only_when_it_holds_one():
    from rethink_dist.sweep.plan import TrialSpec, placed_device

    assert placed_device("auto", []) == "cpu"  # a trial given no GPU on a GPU node
    assert placed_device("auto", ["0"]) == "cuda"
    assert placed_device("cpu", ["0"]) == "cpu" and placed_device("cuda", []) == "cuda"  # asked for: as asked
    kernel = TrialSpec("t0", "kernel", "k", {"device": "cuda"})
    assert kernel.resources() == {"cpu": 1, "gpu": 1}
    assert TrialSpec("t1", "kernel", "k", {}).resources() == {"cpu": 1}
