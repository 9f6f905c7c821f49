"""rethink-dist train: one trial of the randomization test, on this machine."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from rethink_dist.architectures import MODELS  # the declared names, read without importing torch
from rethink_dist.files import check_writable, write_json_atomic

NAME = "train"
HELP = "train one trial (one config) and optionally write its history as JSON"

# flag dest -> dotted config key
FLAG_KEYS = {
    "dataset": "data.name", "data_root": "data.root", "download": "data.download", "loader": "data.loader",
    "beton_dir": "data.beton_dir", "image_size": "data.image_size", "max_train": "data.max_train",
    "channels": "data.channels",
    "corruption": "corruption.kind", "level": "corruption.level", "corruption_seed": "corruption.seed",
    "corrupt_test": "corruption.corrupt_test", "arch": "model.name",
    "lr": "optim.lr", "momentum": "optim.momentum", "lr_decay": "optim.lr_decay",
    "batch_size": "optim.batch_size", "epochs": "optim.epochs",
    "weight_decay": "reg.weight_decay", "augment": "reg.augment", "dropout": "reg.dropout",
    "batch_norm": "reg.batch_norm", "stop_when_fitted": "stop.stop_when_fitted",
    "fit_threshold": "stop.fit_threshold", "ddp_workers": "resources.ddp_workers",
    "ddp_min_workers": "resources.ddp_min_workers",
    "cpus": "resources.cpus", "gpus": "resources.gpus",
    "seed": "seed", "device": "device", "precision": "precision", "name": "name",
}


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """The trial-config flags (shared by every command that builds one trial config)."""
    B = argparse.BooleanOptionalAction
    g = p.add_argument_group("data")
    g.add_argument("--dataset", help="digits (embedded, default) | fashion_mnist | cifar10 | synthetic | imagenet | "
                                           "MODULE:FUNCTION (your own data set: docs/own-code.md)")
    g.add_argument("--data-root", help="folder with the dataset's raw files (cifar10: holds cifar-10-batches-py; "
                                       "fashion_mnist: the four IDX files, default /usr/share/datasets/fashion-mnist)")
    g.add_argument("--download", action=B, default=None, help="download the raw files when missing (network)")
    g.add_argument("--loader", help="memory (default) | ffcv")
    g.add_argument("--beton-dir", help="folder with train.beton and test.beton (implies --loader ffcv)")
    g.add_argument("--image-size", type=int, help="model input side (default: the dataset's crop)")
    g.add_argument("--max-train", type=int, help="use only the first N training samples")
    g.add_argument("--channels", type=int, help="model input channels; a gray channel is repeated "
                                                "(default: the dataset's; fashion_mnist: 3, the paper's input)")
    g = p.add_argument_group("corruption")
    g.add_argument("--corruption", help="none | labels | shuffled_pixels | random_pixels | gaussian")
    g.add_argument("--level", type=float, help="label corruption probability p in [0, 1] (1 = random labels)")
    g.add_argument("--corruption-seed", type=int, help="seed of the corruption (default 0)")
    g.add_argument("--corrupt-test", action=B, default=None, help="also corrupt test labels (default: no)")
    g = p.add_argument_group("model and optimiser")
    g.add_argument("--arch", help=" | ".join(MODELS) + " | torchvision:NAME | timm:NAME | MODULE:FUNCTION "
                                                        "(docs/own-code.md); default mlp_1x512")
    g.add_argument("--lr", type=float, help="initial learning rate (default: 0.1 Inception, 0.01 others)")
    g.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    g.add_argument("--lr-decay", type=float, help="lr factor per epoch (default: the dataset's)")
    g.add_argument("--batch-size", type=int, help="batch size (default 128)")
    g.add_argument("--epochs", type=int, help="maximum epochs (default: the dataset's)")
    g = p.add_argument_group("regularizers")
    g.add_argument("--weight-decay", type=float, help="L2 coefficient on weights (default 0)")
    g.add_argument("--augment", action=B, default=None, help="random crops instead of centre crops")
    g.add_argument("--dropout", type=float, help="dropout probability (default 0)")
    g.add_argument("--no-batch-norm", dest="batch_norm", action="store_const", const=False, default=None,
                   help="without BatchNorm (inception_small, torchvision models with a norm_layer, "
                        "your own builder taking batch_norm)")
    g = p.add_argument_group("stopping and run")
    g.add_argument("--stop-when-fitted", action=B, default=None, help="stop once the training set is fitted")
    g.add_argument("--fit-threshold", type=float, help="training accuracy that counts as fitted (default 1.0)")
    g.add_argument("--seed", type=int, help="seed of initialisation, batch order, dropout (default 0)")
    g.add_argument("--device", help="auto (default) | cpu | cuda")
    g.add_argument("--precision", help="auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16")
    g.add_argument("--ddp-workers", type=int, help="data-parallel workers (Ray Train) for this trial")
    g.add_argument("--ddp-min-workers", type=int, help="fewest data-parallel workers: the trial goes on with as few "
                                                       "when nodes are lost, and grows back to --ddp-workers")
    g.add_argument("--cpus", type=float, help="CPUs per trial / per data-parallel worker")
    g.add_argument("--gpus", type=float, help="GPUs per trial")
    g.add_argument("--name", help="run name (default: built from the config)")
    g.add_argument("--config", metavar="FILE.json", help="a trial config (nested JSON); flags override it")


def config_from_args(args: argparse.Namespace):
    """A validated TrialConfig from ``--config`` and the flags."""
    from rethink_dist.config import ConfigError, TrialConfig

    base: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        try:
            base = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {str(path)!r} is not valid JSON: {e}") from None
        if not isinstance(base, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a JSON object")
    cfg = TrialConfig.from_dict(base)
    changes = {FLAG_KEYS[k]: v for k, v in vars(args).items() if k in FLAG_KEYS and v is not None}
    if "data.beton_dir" in changes and "data.loader" not in changes and "loader" not in base.get("data", {}):
        changes["data.loader"] = "ffcv"  # a .beton folder is read through FFCV
    return cfg.replace(**changes) if changes else cfg


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--json", metavar="OUT", help="write {config, history, summary} to this file")
    p.add_argument("--samples", metavar="OUT.parquet",
                   help="keep per-sample records (sample_records) and write them to this Parquet file")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--print-config", action="store_true",
                   help="print the config this command line would train, resolved (JSON, every field, the data "
                        "set's and architecture's defaults applied: rethink_dist/defaults.py), and exit without "
                        "training")


def run(args: argparse.Namespace) -> int:
    if args.json and not args.print_config:
        check_writable(args.json, "--json")
    if args.samples and not args.print_config:
        check_writable(args.samples, "--samples")
    cfg = config_from_args(args)
    if args.samples and not cfg.sample_records:
        cfg = cfg.replace(sample_records=True)
    if args.print_config:
        print(json.dumps(cfg.resolved().to_dict(), indent=2))
        return 0
    if cfg.resources.ddp_workers:
        return run_ddp(cfg, args)
    from rethink_dist.metrics import ConsoleSink
    from rethink_dist.train import TrainingDiverged, train  # torch: not for --help

    sinks = [] if args.quiet else [ConsoleSink()]
    try:
        result = train(cfg, sinks)
    except TrainingDiverged as e:
        print(f"rethink-dist: training diverged: {e}", file=sys.stderr)
        return 1
    samples = result.pop("samples", None)
    if args.json:
        write_json_atomic(args.json, result)
        if not args.quiet:
            print(f"  wrote {args.json}", file=sys.stderr)
    if args.samples and samples is not None:
        from rethink_dist.files import result_write
        from rethink_dist.parquet import write_sample_records

        with result_write(args.samples):
            write_sample_records(args.samples, cfg.resolved().name, samples)
        if not args.quiet:
            print(f"  wrote {args.samples}", file=sys.stderr)
    return 0


def run_ddp(cfg, args: argparse.Namespace) -> int:
    """One data-parallel trial on the local Ray, through the sweep's Tune trainable; writes --json.
    With $MLFLOW_TRACKING_URI set, the trial is logged there (experiment ``train``)."""
    from rethink_dist.config import ConfigError
    from rethink_dist.sweep.driver import run_one_trial  # Ray: only for data-parallel trials
    from rethink_dist.sweep.plan import spec_from_item

    cfg.validate()
    resolved = cfg.resolved()
    if not resolved.data.beton_dir or not Path(resolved.data.beton_dir).is_dir():
        raise ConfigError(f"data.beton_dir {resolved.data.beton_dir!r} does not exist (prepare it with rethink-dist prepare)")
    spec = spec_from_item(cfg, 0, "the command line")
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not args.quiet:
        print(f"{resolved.name}: {resolved.resources.ddp_workers} data-parallel workers on Ray"
              + (f", logging to MLflow at {tracking_uri}" if tracking_uri else ""), file=sys.stderr, flush=True)
    out = run_one_trial(spec, tracking_uri)
    if out["error"]:
        print(f"rethink-dist: the data-parallel trial failed: {out['error']}", file=sys.stderr)
        return 1
    saved = out["saved"]
    result = {"config": resolved.to_dict(), "meta": saved["meta"], "history": out["history"], "summary": saved["summary"]}
    if not args.quiet:
        s = saved["summary"]
        print(f"{resolved.name}: {s['epochs']} epochs, train {s['train_acc']:.4f}, test top-1 {s['test_acc']:.4f} "
              f"(best {s['best_test_acc']:.4f}), top-5 {s['test_top5']:.4f}", file=sys.stderr)
    if args.json:
        write_json_atomic(args.json, result)
    return 0
