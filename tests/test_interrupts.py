"""Faults during `rethink-dist prepare` and `train`: a failed or interrupted prepare leaves a folder
that held a complete prepare exactly as it was, and a Ctrl-C (SIGINT), SIGTERM or SIGHUP at any
moment, the heavy libraries' imports included, ends the command with exit 128 + the signal's
number (even when a library swallows the KeyboardInterrupt), with nothing complete-looking left
behind. Real processes, real signals, real FFCV files."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import wait_until_it_handles_signals

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "rethink_dist.cli"]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A complete prepare of digits, to copy into each test's folder."""
    out = tmp_path_factory.mktemp("good") / "digits"
    p = subprocess.run(CLI + ["prepare", "digits", "--out", str(out), "--workers", "1"], capture_output=True,
                       text=True, env=ENV, timeout=300)
    assert p.returncode == 0, p.stderr
    assert sorted(os.listdir(out)) == ["meta.json", "test.beton", "train.beton"]
    return out


def _jpegs(root: Path, broken: bool) -> None:
    from PIL import Image

    rng = np.random.default_rng(5)
    for split in ("train", "val"):
        for wnid in ("n01", "n02"):
            (root / split / wnid).mkdir(parents=True, exist_ok=True)
            for k in range(3):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3)).astype(np.uint8)).save(
                    root / split / wnid / f"{wnid}_{k}.JPEG", quality=90)
    if broken:
        (root / "train" / "n02" / "n02_1.JPEG").write_bytes(b"\xff\xd8 a truncated jpeg")


def test_a_failed_reprepare_leaves_a_good_folder_as_it_was(tmp_path):
    from rethink_dist.data.ffcv_writer import read_meta

    raw, out = tmp_path / "raw", tmp_path / "beton"
    _jpegs(raw, broken=False)
    ok = subprocess.run(CLI + ["prepare", "imagenet", "--data-root", str(raw), "--out", str(out), "--workers", "1"],
                        capture_output=True, text=True, env=ENV, timeout=300)
    assert ok.returncode == 0, ok.stderr
    before = digest(out)
    shutil.rmtree(raw)
    _jpegs(raw, broken=True)  # the same folder again, now with one corrupt JPEG among the inputs
    bad = subprocess.run(CLI + ["prepare", "imagenet", "--data-root", str(raw), "--out", str(out), "--workers", "1"],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert bad.returncode == 2 and "n02_1.JPEG" in bad.stderr.strip().splitlines()[-1], bad.stderr
    assert digest(out) == before, "the failed prepare changed the folder"
    assert read_meta(out, "imagenet")["splits"]["train"]["num_samples"] == 6  # still usable


def test_a_reprepare_of_missing_data_leaves_a_good_folder_as_it_was(tmp_path, good):
    """Another failing input: CIFAR-10 batches that are truncated, into a folder with a good prepare."""
    out = tmp_path / "beton"
    shutil.copytree(good, out)
    before = digest(out)
    raw = tmp_path / "cifar" / "cifar-10-batches-py"
    raw.mkdir(parents=True)
    for name in ("data_batch_1", "test_batch"):
        (raw / name).write_bytes(b"\x80\x04 truncated pickle")
    p = subprocess.run(CLI + ["prepare", "cifar10", "--data-root", str(tmp_path / "cifar"), "--out", str(out)],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert digest(out) == before


STOPS = [(signal.SIGINT, "empty", 0.5), (signal.SIGINT, "complete", 0.5), (signal.SIGINT, "empty", 1.5),
         (signal.SIGINT, "complete", 3.0), (signal.SIGTERM, "complete", 0.5), (signal.SIGTERM, "empty", 2.0),
         (signal.SIGHUP, "empty", 1.0), (signal.SIGHUP, "complete", 2.5)]


@pytest.mark.parametrize("sig,start,seconds", STOPS, ids=[f"{s.name}-{st}-{t}" for s, st, t in STOPS])
def test_a_stop_signal_at_any_moment_ends_with_128_plus_its_number(tmp_path, good, sig, start, seconds):
    """The moment counts from the command's start of handling signals (conftest's
    wait_until_it_handles_signals); 0.5 s is inside torch's import on this machine, where raising
    aborted the process (-6)."""
    out = tmp_path / "out"
    if start == "complete":
        shutil.copytree(good, out)
    before = digest(out) if out.exists() else None
    proc = subprocess.Popen(CLI + ["prepare", "digits", "--out", str(out), "--workers", "1"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until_it_handles_signals(proc)
    time.sleep(seconds)
    if proc.poll() is not None:
        proc.communicate()
        pytest.skip(f"the prepare finished within {seconds} s on this machine: nothing to interrupt")
    proc.send_signal(sig)  # our own child, by its handle
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, (proc.returncode, err[-2000:])
    # multiprocessing's resource tracker (a process of its own) may warn after us that it cleaned up
    # the shared memory of FFCV's interrupted writer: not the command's line
    # the command's line ends its output; it may share its line with a print the signal cut short
    own = [ln for ln in err.strip().splitlines() if "resource_tracker" not in ln and "warnings.warn(" not in ln]
    assert own[-1].endswith("rethink-dist: interrupted" if sig == signal.SIGINT
                            else f"rethink-dist: stopped by {sig.name}"), err[-2000:]
    assert "terminate called" not in err and "Traceback" not in err, err[-2000:]
    if before is None:
        assert not (out / "meta.json").exists(), "an interrupted prepare left a complete-looking folder"
        assert not any(p.suffix == ".beton" for p in out.iterdir()) if out.exists() else True
    else:
        assert digest(out) == before, "an interrupted prepare changed a complete folder"


def test_a_swallowed_interrupt_still_ends_with_130(tmp_path, good):
    """A library that catches the KeyboardInterrupt (as numba's compiler does) cannot hide a Ctrl-C:
    the command's flag still says it came, nothing is made complete, the exit code is 130."""
    code = ("import os, signal, sys; from rethink_dist import cli; from rethink_dist.data import ffcv_writer\n"
            "real = ffcv_writer._write_beton\n"
            "def swallowing(*a, **k):\n"
            "    try:\n"
            "        os.kill(os.getpid(), signal.SIGINT)\n"
            "    except KeyboardInterrupt:\n"
            "        print('Exception ignored: KeyboardInterrupt', file=sys.stderr)\n"
            "    return real(*a, **k)\n"
            "ffcv_writer._write_beton = swallowing\n"
            "sys.exit(cli.main(sys.argv[1:]))\n")
    out = tmp_path / "out"
    shutil.copytree(good, out)
    before = digest(out)
    p = subprocess.run([sys.executable, "-c", code, "prepare", "digits", "--out", str(out), "--workers", "1"],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert "Exception ignored" in p.stderr and p.returncode == 130, (p.returncode, p.stderr[-2000:])
    assert digest(out) == before


def test_sigterm_during_training_writes_no_json(tmp_path):
    """`rethink-dist train` stopped by SIGTERM mid-training: exit 143, its one line, no --json file."""
    out = tmp_path / "h.json"
    proc = subprocess.Popen(CLI + ["train", "--arch", "mlp_1x512", "--epochs", "400", "--json", str(out)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while "epoch" not in (line := proc.stderr.readline()):  # the first epoch's line: training has begun
            assert line, "train ended before its first epoch"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, (proc.returncode, err[-2000:])
    assert err.strip().splitlines()[-1] == "rethink-dist: stopped by SIGTERM"
    assert not out.exists() and not list(tmp_path.iterdir())
