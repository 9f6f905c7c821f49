"""Trial configs: strict parsing, documented defaults, a flat view and readable names."""

import pytest

from rethink_dist.config import ConfigError, TrialConfig


def test_defaults_follow_the_paper():
    inc = TrialConfig.from_dict({"model": {"name": "inception_small"}, "data": {"name": "cifar10"}}).resolved()
    assert inc.optim.lr == 0.1 and inc.optim.momentum == 0.9 and inc.optim.batch_size == 128
    assert inc.optim.lr_decay == 0.95 and inc.data.image_size == 28
    mlp = TrialConfig.from_dict({"model": {"name": "mlp_1x512"}, "data": {"name": "cifar10"}}).resolved()
    assert mlp.optim.lr == 0.01
    dig = TrialConfig.from_dict({}).resolved()
    assert dig.data.name == "digits" and dig.optim.lr_decay == pytest.approx(0.95 ** (1437 / 50000))
    # A bare ImageNet trial gets the recipe's schedule (0.94 every two epochs), as sweeps do.
    from rethink_dist.protocol import IMAGENET_RECIPE

    img = TrialConfig.from_dict({"model": {"name": "inception_v3"},
                                 "data": {"name": "imagenet", "loader": "ffcv", "beton_dir": "b"}}).resolved()
    assert img.optim.lr_decay == IMAGENET_RECIPE["optim.lr_decay"] and img.optim.epochs == 90


def test_flat_and_name():
    cfg = TrialConfig.from_dict({"corruption": {"kind": "labels", "level": 0.8}, "reg": {"weight_decay": 1e-4}})
    flat = cfg.to_flat()
    assert flat["corruption.level"] == 0.8 and flat["optim.lr"] == 0.01 and flat["reg.weight_decay"] == 1e-4
    assert flat["name"] == "digits_labels0.8_mlp_1x512_lr0.01_wd0.0001_aug0_s0"
    assert cfg.fingerprint() == TrialConfig.from_dict(cfg.to_dict()).fingerprint()


@pytest.mark.parametrize("d,match", [
    ({"optim": {"lrr": 0.1}}, "unknown config key 'optim.lrr'; valid: optim.lr"),
    ({"bogus": 1}, "unknown config key 'bogus'"),
    ({"optim": {"batch_size": "128"}}, "must be int"),
    ({"optim": {"batch_size": 0}}, "batch_size must be >= 1"),
    ({"reg": {"augment": "yes"}}, "must be bool"),
    ({"corruption": {"kind": "labels", "level": 1.5}}, r"level=1.5 is out of range; valid: \[0, 1\]"),
    ({"corruption": {"kind": "gaussian", "level": 0.5}}, "only applies"),
    ({"corruption": {"kind": "blur"}}, "valid: none, labels"),
    ({"model": {"name": "resnet"}}, "unknown architecture 'resnet'; valid: alexnet_small"),
    ({"data": {"name": "mnist"}}, "unknown dataset 'mnist'; valid: cifar10"),
    ({"reg": {"batch_norm": False}}, "valid: inception_small"),
    ({"data": {"name": "imagenet"}}, "cannot use data.loader='memory'"),
    ({"data": {"loader": "ffcv"}}, "needs data.beton_dir"),
    ({"model": {"kwargs": {"width": 3}}}, "not accepted"),
    # a data-parallel trial's device must agree with its GPUs (NCCL on GPUs, gloo on CPUs)
    ({"data": {"loader": "ffcv", "beton_dir": "/b"}, "device": "cpu",
      "resources": {"ddp_workers": 2, "gpus": 1}}, "device='cpu' with resources.gpus=1"),
    ({"data": {"loader": "ffcv", "beton_dir": "/b"}, "device": "cuda",
      "resources": {"ddp_workers": 2, "gpus": 0}}, "device='cuda' with resources.gpus=0"),
    # per-sample records need the whole training set's evaluation in one process
    ({"data": {"loader": "ffcv", "beton_dir": "/b"}, "sample_records": True,
      "resources": {"ddp_workers": 2}}, "sample_records=True with resources.ddp_workers=2"),
    ({"sample_records": "yes"}, "must be bool"),
    # an elastic data-parallel trial: 1 <= ddp_min_workers <= ddp_workers, and a global batch that
    # divides by every world size it may run at
    ({"data": {"loader": "ffcv", "beton_dir": "/b"}, "resources": {"ddp_workers": 2, "ddp_min_workers": 0}},
     r"resources.ddp_min_workers=0 is out of range; valid: 1..2"),
    ({"data": {"loader": "ffcv", "beton_dir": "/b"}, "resources": {"ddp_workers": 2, "ddp_min_workers": 3}},
     r"resources.ddp_min_workers=3 is out of range; valid: 1..2"),
    ({"resources": {"ddp_min_workers": 1}}, "resources.ddp_min_workers=1 needs a data-parallel trial"),
    ({"data": {"loader": "ffcv", "beton_dir": "/b"}, "optim": {"batch_size": 16},
      "resources": {"ddp_workers": 4, "ddp_min_workers": 2}}, "must be a multiple of every world size from "
     "resources.ddp_min_workers=2 to resources.ddp_workers=4, not of 3"),
    ({"data": {"loader": "ffcv", "beton_dir": "/b"}, "resources": {"ddp_workers": 2, "ddp_resize_check_s": 0}},
     "resources.ddp_resize_check_s must be > 0"),
])
def test_bad_values_are_refused_with_one_line(d, match):
    with pytest.raises(ConfigError, match=match) as e:
        TrialConfig.from_dict(d)
    assert "\n" not in str(e.value)


def test_elastic_ddp_range():
    from rethink_dist.sweep.ddp import worker_range

    base = {"data": {"loader": "ffcv", "beton_dir": "/b"}, "optim": {"batch_size": 24}}
    fixed = TrialConfig.from_dict({**base, "resources": {"ddp_workers": 4}})
    assert worker_range(fixed) == (4, 4)
    elastic = TrialConfig.from_dict({**base, "resources": {"ddp_workers": 4, "ddp_min_workers": 1}})
    assert worker_range(elastic) == (1, 4)
    assert "resources.ddp_min_workers" in elastic.to_flat()
    assert elastic.fingerprint() == fixed.fingerprint(), "the resources do not change what a trial computes"


def test_replace_validates():
    cfg = TrialConfig.from_dict({})
    assert cfg.replace(**{"optim.lr": 0.5}).optim.lr == 0.5
    with pytest.raises(ConfigError):
        cfg.replace(**{"optim.lr": -1.0})
    with pytest.raises(ConfigError, match="unknown config key"):
        cfg.replace(**{"optim.nope": 1})
