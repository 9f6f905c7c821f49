"""Building the architectures named ``torchvision:``, ``timm:`` and ``module:callable`` (rethink_dist.external).

Each is built randomly initialised (the paper trains from scratch) for the data's input shape
(C, H, W) and class count. What is adapted is said in the model's ``adapted`` list, which the
trial logs (``meta.model_adapted``):

- the first convolution takes C channels when the library's model expects another number
  (a gray image: C = 1);
- torchvision's ResNets (resnet*, resnext*, wide_resnet*) on images smaller than 64 pixels get
  the stem of the CIFAR ResNets (He et al. 2016, section 4.2): a 3x3 convolution of stride 1 and
  no max pooling, instead of the 7x7 stride-2 convolution and max pooling made for 224-pixel
  ImageNet images (which would leave one pixel after the first stage on 28x28 inputs);
- torchvision's vision transformers and timm models that take an image size get the data's.

Regularizers: ``dropout=p`` goes to the builder's own dropout argument (torchvision:
``dropout``; timm: ``drop_rate``; your callable: ``dropout``); ``batch_norm=False`` passes an
identity as a torchvision builder's ``norm_layer`` (a pure normalisation there) and ``batch_norm=False``
to your callable; timm models are refused it (their ``norm_layer`` often carries the activation).
A builder without the argument is refused in one line.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch.nn as nn

from rethink_dist.errors import ConfigError
from rethink_dist.external import import_callable, import_timm, model_kind, split, torchvision_models

SMALL_IMAGE = 64  # below this side, torchvision's ResNets get the CIFAR stem
_RESNETS = ("resnet", "resnext", "wide_resnet")


def _no_norm(*args: Any, **kwargs: Any) -> nn.Module:
    """A ``norm_layer`` that is the identity (``reg.batch_norm=False``)."""
    return nn.Identity()


def build(name: str, input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0,
          batch_norm: bool = True, **kwargs: Any) -> nn.Module:
    """The model ``name`` names, with an ``adapted`` attribute listing what was changed for the data."""
    kind = model_kind(name)
    builders: dict[str, Callable[..., tuple[nn.Module, list[str]]]] = {
        "torchvision": _torchvision, "timm": _timm, "module": _user}
    model, adapted = builders[kind](name, tuple(int(v) for v in input_shape), int(num_classes), dropout, batch_norm,
                                    kwargs)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.name={name!r} returned a {type(model).__name__}; valid: a torch.nn.Module")
    model.adapted = adapted
    return model


def _ask(kw: dict[str, Any], asked: dict[str, str], dropout: float, batch_norm: bool, dropout_arg: str,
         no_norm: tuple[str, Any] | None) -> None:
    """Put the config's regularizers into a builder's arguments, noting which setting asked for each."""
    if dropout:
        kw[dropout_arg] = dropout
        asked[dropout_arg] = f"reg.dropout={dropout:g}"
    if not batch_norm and no_norm is not None:
        kw[no_norm[0]] = no_norm[1]
        asked[no_norm[0]] = "reg.batch_norm=False"


def _call(name: str, builder: Callable[..., Any], kwargs: dict[str, Any], asked: dict[str, str]) -> Any:
    """Call a builder; an argument it does not take is the config's fault when the config asked for it."""
    try:
        return builder(**kwargs)
    except TypeError as e:
        text = str(e)
        for arg, setting in asked.items():
            if f"'{arg}'" in text and "argument" in text:
                raise ConfigError(f"{setting} is not supported by {name!r}: its builder takes no {arg!r} argument"
                                  ) from None
        raise ConfigError(f"model.name={name!r} could not be built with {sorted(kwargs)}: {text.splitlines()[0]}"
                          ) from None
    except (ValueError, RuntimeError, AssertionError) as e:
        raise ConfigError(f"model.name={name!r} could not be built: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                          ) from None


def _torchvision(name, input_shape, num_classes, dropout, batch_norm, kwargs):
    import torchvision.models

    _, target = split(name, "model.name")
    if target not in torchvision_models():
        raise ConfigError(f"model.name={name!r}: torchvision has no classification model {target!r}")
    c, h, w = input_shape
    kw: dict[str, Any] = {"weights": None, "num_classes": num_classes}
    asked: dict[str, str] = {}
    adapted: list[str] = []
    if target in ("googlenet", "inception_v3"):
        kw.update(aux_logits=False, init_weights=True)  # one output; torchvision's own initialisation
    if target.startswith("vit_") and (h, w) != (224, 224):
        kw["image_size"] = h
        adapted.append(f"image_size={h}")
    _ask(kw, asked, dropout, batch_norm, "dropout", ("norm_layer", _no_norm))
    kw.update(kwargs)
    model = _call(name, torchvision.models.get_model_builder(target), kw, asked)
    if target.startswith(_RESNETS) and min(h, w) < SMALL_IMAGE:
        model.conv1 = nn.Conv2d(c, model.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
        adapted.append(f"stem: 3x3 stride-1 conv on {c} channels, no max pooling (images under {SMALL_IMAGE} px)")
    else:
        adapted += _first_conv_channels(model, c)
    return model, adapted


def _timm(name, input_shape, num_classes, dropout, batch_norm, kwargs):
    timm = import_timm(name)
    _, target = split(name, "model.name")
    c, h, w = input_shape
    kw: dict[str, Any] = {"pretrained": False, "num_classes": num_classes, "in_chans": c}
    asked: dict[str, str] = {}
    _ask(kw, asked, dropout, True, "drop_rate", None)
    if not batch_norm:
        # timm's norm_layer is often a norm-and-activation layer (BatchNormAct2d): an identity in its
        # place would remove the nonlinearity too. Say so rather than train another network.
        raise ConfigError(f"reg.batch_norm=False is not supported by {name!r}: timm models take a norm-and-activation "
                          "layer as norm_layer, so no BatchNorm cannot be expressed uniformly; valid: "
                          "inception_small, torchvision:<builder> with a norm_layer argument, or your own callable")
    kw.update(kwargs)
    adapted = [f"in_chans={c}"] if c != 3 else []

    def create(**more: Any) -> nn.Module:
        return timm.create_model(target, **more)

    if "img_size" not in kw:
        try:  # the models that take an image size (vision transformers, ...) get the data's
            return _call(name, create, {**kw, "img_size": (h, w)}, asked), adapted + [f"img_size={h}x{w}"]
        except ConfigError as e:
            if "img_size" not in str(e):  # not about the image size: the config's error, said once
                raise
    return _call(name, create, kw, asked), adapted


def _user(name, input_shape, num_classes, dropout, batch_norm, kwargs):
    builder = import_callable(name, "model.name")
    kw = dict(kwargs)
    asked: dict[str, str] = {}
    _ask(kw, asked, dropout, batch_norm, "dropout", ("batch_norm", False))
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for arg, setting in asked.items():
        if params and not takes_any and arg not in params:
            raise ConfigError(f"{setting} is not supported by {name!r}: it takes no {arg!r} argument "
                              f"(its signature: {inspect.signature(builder)})")
    return _call(name, lambda **k: builder(input_shape, num_classes, **k), kw, asked), []


def _first_conv_channels(model: nn.Module, channels: int) -> list[str]:
    """Make the first convolution take ``channels`` input channels; what was changed."""
    for full, child in model.named_modules():
        if isinstance(child, nn.Conv2d):
            if child.in_channels == channels:
                return []
            parent_name, _, child_name = full.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child_name, nn.Conv2d(channels, child.out_channels, child.kernel_size, child.stride,
                                                  child.padding, child.dilation, 1, child.bias is not None,
                                                  child.padding_mode))
            return [f"first convolution ({full}) takes {channels} channels (was {child.in_channels})"]
    return []
