"""The package's architectures: each one declared once, beside its builder, by ``@register_model``.

A file of ``rethink_dist/models/`` (the folder is the list: no import list to keep) declares an
architecture with one decorator on its builder::

    @register_model("mlp_1x512", dropout=True, weight_decay=1e-4, params=1_209_866)
    def mlp_1x512(input_shape, num_classes, dropout: float = 0.0) -> nn.Module:
        ...  # its docstring is the architecture's description

The decorator's arguments are the architecture's facts (:class:`ModelSpec`): what it can express
(``dropout``, ``batch_norm_switch``, extra keyword arguments ``kwargs``), the paper's initial
learning rate ``lr`` and weight-decay coefficient ``weight_decay`` (None: the paper's defaults in
:mod:`rethink_dist.protocol`), and ``params``, its parameter count on the paper's 3x28x28 input
with 10 classes (tests/test_models.py builds every model and checks it). The builder's docstring
is its description.

The arguments are literals because this module reads them from the model files' source without
importing them: it is in the facts layer, below the models and torch, so a config is checked and
``--help`` lists the names without importing torch. :func:`rethink_dist.models.create` imports a
builder's module when it builds the model; the decorator then checks the declaration it runs is
the one read here.
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, TypeVar

from rethink_dist.errors import ConfigError

PACKAGE = "rethink_dist.models"
FOLDER = Path(__file__).resolve().parent / "models"
DECORATOR = "register_model"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # a bare name: "prefix:target" names an outside model

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ModelSpec:
    """An architecture's facts, as its ``@register_model`` declares them."""

    name: str
    module: str  # the module of its builder (rethink_dist.models.<file>)
    builder: str  # the builder's name in that module
    kwargs: tuple[str, ...] = ()  # extra keyword arguments the builder accepts (model.kwargs)
    dropout: bool = False  # accepts dropout=p
    batch_norm_switch: bool = False  # accepts batch_norm=False
    lr: float | None = None  # the paper's initial learning rate; None: protocol.PAPER_LR_DEFAULT
    weight_decay: float | None = None  # coefficient when weight decay is on; None: protocol.PAPER_WEIGHT_DECAY_DEFAULT
    params: int | None = None  # trainable parameters on 3x28x28 inputs, 10 classes (the paper's counts)
    description: str = ""  # the first paragraph of the builder's docstring


def register_model(name: str, **facts: Any) -> Callable[[F], F]:
    """Declare the architecture ``name`` with its ``facts`` (the fields of :class:`ModelSpec` after
    ``builder``, by keyword, as literals: they are read from the source, see the module docstring),
    built by the decorated function of a file in rethink_dist/models/, which is returned unchanged;
    it is called as ``builder((C, H, W), num_classes, **kwargs)``."""

    def deco(fn: F) -> F:
        spec = _spec(name, fn.__module__, fn.__name__, inspect.getdoc(fn), facts, where=fn.__module__)
        if declarations().get(name) != spec:
            raise ValueError(f"@{DECORATOR}({name!r}) in {fn.__module__} is not a declaration read from {FOLDER}: "
                             f"{DECORATOR} declares the architectures of that folder's files, with literal arguments "
                             "(an outside builder is named <module>:<callable>: docs/own-code.md)")
        return fn

    return deco


# What a declaration may state, by keyword: the fields of ModelSpec its file does not already give.
FACTS = tuple(f.name for f in fields(ModelSpec) if f.name not in ("name", "module", "builder", "description"))


def _spec(name: Any, module: str, builder: str, doc: str | None, facts: Mapping[str, Any], where: str) -> ModelSpec:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{where}: architecture name {name!r} must be lowercase letters, digits and _")
    unknown = sorted(set(facts) - set(FACTS))
    if unknown:
        raise ValueError(f"{where}: @{DECORATOR}({name!r}) has no fact {unknown[0]!r}; valid: {', '.join(FACTS)}")
    if isinstance(facts.get("kwargs"), list):
        facts = {**facts, "kwargs": tuple(facts["kwargs"])}
    description = " ".join((doc or "").split("\n\n")[0].split())
    return ModelSpec(name, module, builder, description=description, **facts)


# ------------------------------------------------------------------------------ reading the folder
@functools.cache
def declarations() -> dict[str, ModelSpec]:
    """Every architecture declared in rethink_dist/models/, by name (read once per process)."""
    found: dict[str, ModelSpec] = {}
    for path in sorted(FOLDER.glob("*.py")):
        for spec in _declared_in(path, f"{PACKAGE}.{path.stem}"):
            if spec.name in found:
                raise ValueError(f"architecture {spec.name!r} is declared twice: in {found[spec.name].module} "
                                 f"and {spec.module}")
            found[spec.name] = spec
    return found


def _declared_in(path: Path, module: str) -> Iterator[ModelSpec]:
    text = path.read_text()
    if DECORATOR not in text:
        return
    for node in ast.parse(text, str(path)).body:
        if not isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            continue
        for dec in node.decorator_list:
            func = dec.func if isinstance(dec, ast.Call) else dec
            if (func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)) != DECORATOR:
                continue
            where = f"{path}:{dec.lineno}"
            if not isinstance(dec, ast.Call) or len(dec.args) != 1:
                raise ValueError(f"{where}: @{DECORATOR} takes the architecture's name, then its facts by keyword")
            try:
                name = ast.literal_eval(dec.args[0])
                facts = {k.arg: ast.literal_eval(k.value) for k in dec.keywords}
            except ValueError:
                raise ValueError(f"{where}: the arguments of @{DECORATOR} must be literals (they are read "
                                 "without importing the file)") from None
            if None in facts:
                raise ValueError(f"{where}: @{DECORATOR} takes its facts by keyword, not **mapping")
            yield _spec(name, module, node.name, ast.get_docstring(node), facts, where)


# ------------------------------------------------------------------------------ looking up
class _Catalog(Mapping[str, ModelSpec]):
    """The declared architectures as a read-only mapping, name -> :class:`ModelSpec`."""

    def __getitem__(self, name: str) -> ModelSpec:
        return declarations()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(declarations())

    def __len__(self) -> int:
        return len(declarations())

    def __repr__(self) -> str:
        return f"MODELS({', '.join(sorted(self))})"


MODELS: Mapping[str, ModelSpec] = _Catalog()


def model_spec(name: str) -> ModelSpec:
    """The facts of architecture ``name``; ConfigError (one line) naming the valid ones if none."""
    if name not in MODELS:
        raise ConfigError(f"unknown architecture {name!r}; valid: {', '.join(sorted(MODELS))}")
    return MODELS[name]
