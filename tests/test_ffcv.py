"""The FFCV data path, on real .beton files written from real (small) files.

- CIFAR-10 python batches and an ImageNet-layout folder of JPEG files, written here, go through
  ``prepare`` and come back through FFCV unchanged.
- For every corruption kind and two seeds, the FFCV loader's corrupted images and labels equal
  the memory loader's bit for bit (before and after cropping and whitening).
- A trial with ``loader='ffcv'`` fits random labels on digits.
- Missing, truncated and foreign .beton files give one line and exit code 2.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from rethink_dist.cli import main
from rethink_dist.config import TrialConfig
from rethink_dist.corruption import channel_stats
from rethink_dist.data import DataError, load
from rethink_dist.data.cifar import write_cifar10
from rethink_dist.data.ffcv_writer import prepare, read_meta
from rethink_dist.data.memory import MemoryLoader, corrupt_dataset

CPU = torch.device("cpu")
CASES = [("labels", 0.6), ("shuffled_pixels", 0.0), ("random_pixels", 0.0), ("gaussian", 0.0)]


def ffcv_cfg(name: str, beton_dir: Path, kind: str = "none", level: float = 0.0, seed: int = 0, **data) -> TrialConfig:
    return TrialConfig.from_dict({
        "data": {"name": name, "loader": "ffcv", "beton_dir": str(beton_dir), **data},
        "corruption": {"kind": kind, "level": level, "seed": seed},
        "device": "cpu",
    })


def build(cfg: TrialConfig):
    from rethink_dist.data.ffcv_loader import build_ffcv_loader

    return build_ffcv_loader(cfg, CPU)


# ------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """Small random CIFAR-10 python batches and their .beton files."""
    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(1)
    tr_x = rng.integers(0, 256, (250, 32, 32, 3), dtype=np.uint8)
    te_x = rng.integers(0, 256, (70, 32, 32, 3), dtype=np.uint8)
    write_cifar10(root / "raw", tr_x, rng.integers(0, 10, 250), te_x, rng.integers(0, 10, 70))
    out = root / "beton"
    meta = prepare("cifar10", str(root / "raw"), out, workers=2)
    return {"root": str(root / "raw"), "out": out, "meta": meta, "ds": load("cifar10", str(root / "raw"))}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits") / "beton"
    prepare("digits", None, out, workers=2)
    return out


def _jpeg_tree(root: Path, sizes: dict[str, list[tuple[int, int]]], classes=("n01", "n02", "n03")) -> dict:
    """train/<wnid>/*.JPEG and val/<wnid>/*.JPEG of smooth random images; returns the expected pixels."""
    from PIL import Image

    rng = np.random.default_rng(2)
    written = {}
    for split, shapes in sizes.items():
        for c, wnid in enumerate(classes):
            (root / split / wnid).mkdir(parents=True, exist_ok=True)
            for k, (h, w) in enumerate(shapes):
                base = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3)).astype(np.uint8)
                img = np.asarray(Image.fromarray(base).resize((w, h), Image.BILINEAR))
                path = root / split / wnid / f"{wnid}_{k}.JPEG"
                Image.fromarray(img).save(path, quality=92)
                written[f"{split}/{wnid}/{path.name}"] = c
    return written


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    written = _jpeg_tree(root / "raw", {"train": [(32, 32), (48, 64), (80, 40), (36, 36)], "val": [(32, 32), (60, 45)]})
    meta = prepare("imagenet", str(root / "raw"), root / "beton", max_resolution=48, write_mode="raw", workers=2)
    return {"raw": root / "raw", "out": root / "beton", "meta": meta, "written": written}


# ------------------------------------------------------------------------------------- round trips
def test_cifar_roundtrip_and_metadata(cifar):
    ds, meta = cifar["ds"], cifar["meta"]
    assert (meta["dataset"], meta["num_classes"], meta["image_shape"]) == ("cifar10", 10, [32, 32, 3])
    assert meta["splits"]["train"]["num_samples"] == 250 and meta["splits"]["test"]["num_samples"] == 70
    assert meta["fingerprint"] == ds.fingerprint  # the memory loader logs the same fingerprint
    mean, std = channel_stats(ds.train_x)
    assert meta["channel_mean"] == mean.tolist() and meta["channel_std"] == std.tolist()
    assert json.loads((cifar["out"] / "meta.json").read_text()) == meta
    assert sorted(os.listdir(cifar["out"])) == ["meta.json", "test.beton", "train.beton"]  # no temporaries

    loader, info = build(ffcv_cfg("cifar10", cifar["out"]))
    assert (info["num_train"], info["num_test"], info["labels_changed"]) == (250, 70, 0)
    assert info["dataset_fingerprint"] == ds.fingerprint
    for split, x, y in (("train", ds.train_x, ds.train_y), ("test", ds.test_x, ds.test_y)):
        got_x, got_y = loader.corrupted_arrays(split)
        assert got_x.dtype == np.uint8 and np.array_equal(got_x, x)
        assert np.array_equal(got_y, y)
    assert loader.input_shape == (3, 28, 28)


def test_imagenet_jpeg_folder_roundtrip(imagenet):
    from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import ToTensor
    from PIL import Image

    from rethink_dist.data.ffcv_writer import keep_torch_threads

    meta, out, raw = imagenet["meta"], imagenet["out"], imagenet["raw"]
    assert meta["classes"] == ["n01", "n02", "n03"] and meta["max_resolution"] == 48
    assert meta["splits"]["train"]["num_samples"] == 12 and meta["splits"]["test"]["num_samples"] == 6
    # Stored sizes: the longer side is cut to 48, smaller images are kept as they are.
    with keep_torch_threads():
        from ffcv.reader import Reader

        md = Reader(str(out / "train.beton")).metadata
    sizes = sorted({(int(h), int(w)) for h, w in zip(md["f0"]["height"], md["f0"]["width"])})
    assert sizes == [(32, 32), (36, 36), (36, 48), (48, 24)]
    # Square 32x32 images come back pixel for pixel (raw mode, a full-image crop at the same size).
    with keep_torch_threads():
        loader = Loader(str(out / "test.beton"), batch_size=8, num_workers=1, order=OrderOption.SEQUENTIAL,
                        drop_last=False, pipelines={"image": [CenterCropRGBImageDecoder((32, 32), ratio=1.0), ToTensor()],
                                                    "label": [IntDecoder(), ToTensor()], "index": [IntDecoder(), ToTensor()]})
        images, labels, index = (t.numpy() for t in next(iter(loader)))
    val = sorted(k for k in imagenet["written"] if k.startswith("val/"))
    assert index.ravel().tolist() == list(range(6))
    assert labels.ravel().tolist() == [imagenet["written"][k] for k in val]
    for i, rel in enumerate(val):
        if rel.endswith("_0.JPEG"):  # the 32x32 ones
            expected = np.asarray(Image.open(raw / rel).convert("RGB"))
            assert np.array_equal(images[i], expected)
    # Through the trial loader: centre crops at image_size, whitened, with every pixel corruption.
    loader, info = build(ffcv_cfg("imagenet", out, "random_pixels", image_size=24))
    x, y = next(iter(loader.eval_batches("test")))
    assert x.shape == (6, 3, 24, 24) and x.dtype == torch.float32 and y.tolist() == labels.ravel().tolist()
    assert torch.allclose(x.mean(dim=(1, 2, 3)), torch.zeros(6), atol=1e-5)
    g = torch.Generator().manual_seed(0)
    cfg = ffcv_cfg("imagenet", out, "gaussian", image_size=24).replace(**{"reg.augment": True, "optim.batch_size": 5})
    loader, _ = build(cfg)
    batches = list(loader.train_batches(5, g))
    assert [b[0].shape[0] for b in batches] == [5, 5, 2] and batches[0][0].shape[1:] == (3, 24, 24)


# ------------------------------------------------------------------------------------- corruption
@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("kind,level", CASES)
def test_corruption_equals_memory_path(cifar, kind, level, seed):
    cfg = ffcv_cfg("cifar10", cifar["out"], kind, level, seed, root=cifar["root"])
    loader, info = build(cfg)
    arrays = corrupt_dataset(cifar["ds"], cfg.corruption)
    memory = MemoryLoader(arrays, 28, False, 0, CPU)
    # Stored resolution, right after the corruption.
    x, y = loader.corrupted_arrays("train")
    assert x.dtype == arrays.train_x.dtype and np.array_equal(x, arrays.train_x)
    assert np.array_equal(y, arrays.train_y)
    # Model inputs: cropped and whitened, every split, in sample order.
    for split in ("train", "test"):
        fx, fy = map(torch.cat, zip(*loader.eval_batches(split)))
        mx, my = map(torch.cat, zip(*memory.eval_batches(split)))
        assert torch.equal(fx, mx) and torch.equal(fy, my)
    assert torch.equal(loader.changed, memory.changed)
    assert info["labels_changed"] == int(arrays.changed.sum())
    if kind == "labels":
        assert 0 < info["labels_changed"] < 250


def test_one_channel_ndarray_path_equals_memory(digits):
    cfg = ffcv_cfg("digits", digits, "random_pixels", 0.0, 3, max_train=300)
    loader, info = build(cfg)
    ds = load("digits").subset_train(300)
    memory = MemoryLoader(corrupt_dataset(ds, cfg.corruption), 8, False, 1, CPU)
    assert info["num_train"] == 300 and loader.input_shape == (1, 8, 8)
    for split in ("train", "test"):
        fx, fy = map(torch.cat, zip(*loader.eval_batches(split)))
        mx, my = map(torch.cat, zip(*memory.eval_batches(split)))
        assert torch.equal(fx, mx) and torch.equal(fy, my)
    # gaussian on a training subset: the stats are the subset's, as in the memory path.
    cfg = ffcv_cfg("digits", digits, "gaussian", 0.0, 3, max_train=300)
    loader, _ = build(cfg)
    x, _ = loader.corrupted_arrays("test")
    assert np.array_equal(x, corrupt_dataset(ds, cfg.corruption).test_x)


# ------------------------------------------------------------------------------------- epochs
def test_train_batches_order_augment_and_threads(cifar):
    torch.set_num_threads(2)
    cfg = ffcv_cfg("cifar10", cifar["out"], "labels", 1.0, 0).replace(**{"reg.augment": True, "optim.batch_size": 64})
    loader, _ = build(cfg)
    assert torch.get_num_threads() == 2  # creating the loaders did not leave torch on FFCV's count
    memory = MemoryLoader(corrupt_dataset(cifar["ds"], cfg.corruption), 28, False, 0, CPU)
    train_y = torch.cat([y for _, y in memory.eval_batches("train")])

    def epoch(seed: int):
        ys, sizes = [], []
        for x, y in loader.train_batches(64, torch.Generator().manual_seed(seed)):
            assert torch.get_num_threads() == 2  # nor did starting the epoch
            assert x.shape[1:] == (3, 28, 28) and x.dtype == torch.float32
            ys.append(y)
            sizes.append(len(y))
        return torch.cat(ys), sizes

    a, sizes = epoch(1)
    assert sizes == [64, 64, 64, 58]
    assert Counter(a.tolist()) == Counter(train_y.tolist())  # every sample once, with its corrupted label
    b, _ = epoch(1)
    c, _ = epoch(2)
    assert torch.equal(a, b) and not torch.equal(a, c)  # the order is a function of the epoch's generator
    assert torch.get_num_threads() == 2
    with pytest.raises(ValueError, match="batch size 64"):
        next(loader.train_batches(32, torch.Generator()))


def test_import_keeps_torch_threads():
    code = ("import torch; torch.set_num_threads(2); from rethink_dist.data.ffcv_writer import import_ffcv; "
            "import_ffcv(); import ffcv; assert torch.get_num_threads() == 2, torch.get_num_threads(); print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def _rank(rank: int, world: int, init: str, beton_dir: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    from rethink_dist.data.ffcv_loader import build_ffcv_loader

    cfg = ffcv_cfg("digits", Path(beton_dir), "labels", 1.0, 0).replace(**{"optim.batch_size": 100})
    loader, _ = build_ffcv_loader(cfg, CPU, distributed=True)
    xs = [x for x, _ in loader.train_batches(100, torch.Generator().manual_seed(5))]
    torch.save(torch.cat(xs), f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_distributed_ranks_get_disjoint_shards(digits, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_rank, args=(2, f"file://{tmp_path}/pg", str(digits), str(tmp_path)), nprocs=2, join=True)
    shards = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    n = 1437
    assert [len(s) for s in shards] == [(n + 1) // 2] * 2  # DistributedSampler pads to equal shards
    cfg = ffcv_cfg("digits", digits, "labels", 1.0, 0)
    memory = MemoryLoader(corrupt_dataset(load("digits"), cfg.corruption), 8, False, 1, CPU)
    every = Counter(map(bytes, memory.train_eval.reshape(n, -1).numpy().view(np.uint8).reshape(n, -1)))
    seen = [Counter(map(bytes, s.reshape(len(s), -1).numpy().view(np.uint8).reshape(len(s), -1))) for s in shards]
    assert set(seen[0]) | set(seen[1]) == set(every)
    overlap = sum((seen[0] & seen[1]).values())
    assert overlap <= 1 + sum(c - 1 for c in every.values())  # one padding sample (+ duplicate images)


# ------------------------------------------------------------------------------------- training
def test_ffcv_trial_fits_random_labels_like_memory(digits):
    from rethink_dist.train import train

    # MLP 3x512 memorises all 1,437 random digits labels in about 170 epochs (MLP 1x512 needs ~600).
    base = {"data": {"name": "digits"}, "corruption": {"kind": "labels", "level": 1.0, "seed": 0},
            "model": {"name": "mlp_3x512"}, "stop": {"stop_when_fitted": True, "fit_threshold": 1.0},
            "optim": {"epochs": 400},
            "device": "cpu", "seed": 0}
    mem = train(TrialConfig.from_dict(base))
    ffcv = train(TrialConfig.from_dict({**base, "data": {"name": "digits", "loader": "ffcv", "beton_dir": str(digits)}}))
    assert mem["summary"]["fitted"] and ffcv["summary"]["fitted"], (mem["summary"], ffcv["summary"])
    assert ffcv["summary"]["train_acc"] == 1.0  # all 1,437 random labels memorised
    assert ffcv["meta"]["labels_changed"] == mem["meta"]["labels_changed"] > 1000
    assert ffcv["meta"]["dataset_fingerprint"] == mem["meta"]["dataset_fingerprint"]
    assert ffcv["history"][-1]["test_acc"] < 0.25  # random labels: test accuracy near chance
    ratio = ffcv["summary"]["steps_to_fit"] / mem["summary"]["steps_to_fit"]
    assert 0.5 < ratio < 2.0, (mem["summary"], ffcv["summary"])


# ------------------------------------------------------------------------------------- bad input
def _cli(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    err = capsys.readouterr().err.strip()
    return code, err


def _train_args(beton_dir: Path, dataset: str = "digits") -> list[str]:
    return ["train", "--dataset", dataset, "--loader", "ffcv", "--beton-dir", str(beton_dir), "--epochs", "1",
            "--device", "cpu", "--quiet"]


def test_missing_truncated_and_foreign_betons(tmp_path, digits, cifar, capsys):
    code, err = _cli(capsys, *_train_args(tmp_path / "nowhere"))
    assert code == 2 and len(err.splitlines()) == 1 and "does not exist" in err and "rethink-dist prepare digits" in err

    trunc = tmp_path / "trunc"
    shutil.copytree(digits, trunc)
    with open(trunc / "train.beton", "r+b") as f:
        f.truncate(os.path.getsize(trunc / "train.beton") // 2)
    code, err = _cli(capsys, *_train_args(trunc))
    assert code == 2 and len(err.splitlines()) == 1 and "truncated" in err and "train.beton" in err

    foreign = tmp_path / "foreign"
    shutil.copytree(digits, foreign)
    shutil.copy(cifar["out"] / "train.beton", foreign / "train.beton")
    code, err = _cli(capsys, *_train_args(foreign))
    assert code == 2 and len(err.splitlines()) == 1 and "train.beton" in err and "expected" in err

    code, err = _cli(capsys, *_train_args(cifar["out"]))  # cifar10's files for a digits trial
    assert code == 2 and len(err.splitlines()) == 1 and "dataset 'cifar10', not 'digits'" in err

    (foreign / "meta.json").unlink()
    code, err = _cli(capsys, *_train_args(foreign))
    assert code == 2 and len(err.splitlines()) == 1 and "missing meta.json" in err

    with pytest.raises(DataError, match="truncated"):
        read_meta(trunc, "digits")


def test_prepare_bad_input_leaves_nothing(tmp_path, capsys):
    code, err = _cli(capsys, "prepare", "digits", "--out", str(tmp_path / "a"), "--write-mode", "png")
    assert code == 2 and "--write-mode" in err and "raw" in err and len(err.splitlines()) == 1
    code, err = _cli(capsys, "prepare", "cifar10", "--out", str(tmp_path / "b"), "--max-resolution", "16")
    assert code == 2 and "imagenet only" in err
    code, err = _cli(capsys, "prepare", "imagenet", "--data-root", str(tmp_path / "none"), "--out", str(tmp_path / "c"))
    assert code == 2 and "does not exist" in err and len(err.splitlines()) == 1
    # A file that is not an image: refused by name, and no .beton or meta.json is left behind.
    raw = tmp_path / "raw"
    _jpeg_tree(raw, {"train": [(16, 16)], "val": [(16, 16)]}, classes=("n01", "n02"))
    (raw / "train" / "n02" / "broken.JPEG").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    code, err = _cli(capsys, "prepare", "imagenet", "--data-root", str(raw), "--out", str(out), "--workers", "1")
    assert code == 2 and "broken.JPEG" in err.splitlines()[-1]
    assert os.listdir(out) == []


# ------------------------------------------------------------------------------------- Fashion-MNIST
@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    """The first 600 / 200 real Fashion-MNIST images as IDX files, and their .beton files."""
    from rethink_dist.data.fashion_mnist import DEFAULT_ROOT, write_fashion_mnist

    if not (Path(DEFAULT_ROOT) / "train-images-idx3-ubyte.gz").is_file() and not os.environ.get("CI"):
        pytest.skip("Debian's dataset-fashion-mnist is not installed (make system-deps installs it)")
    real = load("fashion_mnist")
    root = tmp_path_factory.mktemp("fashion")
    write_fashion_mnist(root / "raw", real.train_x[:600], real.train_y[:600], real.test_x[:200], real.test_y[:200])
    meta = prepare("fashion_mnist", str(root / "raw"), root / "beton", workers=2)
    return {"root": str(root / "raw"), "out": root / "beton", "meta": meta, "ds": load("fashion_mnist", str(root / "raw"))}


@pytest.mark.parametrize("kind,level", [("none", 0.0)] + CASES)
def test_fashion_mnist_ffcv_equals_memory_path(fashion, kind, level):
    """prepare fashion_mnist, then the FFCV path gives the memory path's 3-channel inputs bit for bit:
    corrupted pixels and labels, centre-cropped evaluation batches, augmented training batches."""
    from rethink_dist.data.preprocess import preprocess

    meta = fashion["meta"]
    assert meta["image_shape"] == [28, 28, 1] and meta["image_field"] == "ndarray"
    assert meta["splits"]["train"]["num_samples"] == 600 and meta["fingerprint"] == fashion["ds"].fingerprint
    cfg = ffcv_cfg("fashion_mnist", fashion["out"], kind, level, 5, root=fashion["root"])
    cfg = cfg.replace(**{"reg.augment": True, "optim.batch_size": 128})
    loader, _ = build(cfg)
    arrays = corrupt_dataset(fashion["ds"], cfg.corruption)
    memory = MemoryLoader(arrays, 28, False, 2, CPU, channels=3)
    x, y = loader.corrupted_arrays("train")
    assert np.array_equal(x, arrays.train_x) and np.array_equal(y, arrays.train_y)
    assert loader.input_shape == memory.input_shape == (3, 28, 28)
    for split in ("train", "test"):
        fx, fy = map(torch.cat, zip(*loader.eval_batches(split)))
        mx, my = map(torch.cat, zip(*memory.eval_batches(split)))
        assert torch.equal(fx, mx) and torch.equal(fy, my)
    # Augmented training batches: the same random crops (padding 2) of the same corrupted images.
    batches = list(loader.train_batches(128, torch.Generator().manual_seed(3)))
    order = torch.from_numpy(loader.last_epoch[0].astype(np.int64))
    raw = torch.from_numpy(arrays.train_x).permute(0, 3, 1, 2).contiguous()
    gen = torch.Generator().manual_seed(3)
    torch.randint(0, 2**31 - 1, (1,), generator=gen)  # the draw of FFCV's epoch number
    start = 0
    for bx, by in batches:
        idx = order[start : start + len(by)]
        start += len(by)
        expected = preprocess(raw[idx], 28, augment=True, pad=2, generator=gen, channels=3)
        assert torch.equal(bx, expected) and torch.equal(by, torch.from_numpy(arrays.train_y)[idx])
    assert start == 600


def test_loaders_bench_reports_the_jpeg_path_corruption_cost(tmp_path):
    """bench/loaders.py at tiny size with one corruption: the raw CIFAR case and the ImageNet-layout
    JPEG case each report images/s and the corruption's cost, and bench/table.py renders both."""
    bench = Path(__file__).resolve().parents[1] / "bench"
    out = tmp_path / "loaders.json"
    r = subprocess.run([sys.executable, str(bench / "loaders.py"), "--n", "256", "--batch-size", "64", "--repeats", "1",
                        "--jpeg-n", "10", "--kinds", "gaussian", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert json.loads(r.stdout) == doc
    for body in (doc, doc["imagenet_jpeg"]):
        assert set(body["ffcv_corrupted_by_kind"]) == {"gaussian"}
        assert body["ffcv"] > 0 and body["ffcv_corrupted_by_kind"]["gaussian"] > 0
        assert body["corruption_cost"]["end_to_end"]["gaussian"] == round(
            1 - body["ffcv_corrupted_by_kind"]["gaussian"] / body["ffcv"], 3)
    assert doc["imagenet_jpeg"]["n_train"] == 10
    t = subprocess.run([sys.executable, str(bench / "table.py"), "loaders", str(out)], capture_output=True, text=True,
                       timeout=60)
    assert t.returncode == 0, t.stderr
    assert t.stdout.count("| gaussian |") == 2 and "ImageNet-layout JPEG" in t.stdout
    bad = subprocess.run([sys.executable, str(bench / "loaders.py"), "--kinds", "blur"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "gaussian" in bad.stderr, bad.stderr
