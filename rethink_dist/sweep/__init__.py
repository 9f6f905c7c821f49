"""Where trials run: a sweep's plan (:mod:`.plan`, no Ray), the code on Ray's workers (:mod:`.worker`,
:mod:`.ddp`) and the driver that runs them and writes their results (:mod:`.driver`).

Sweep files import :func:`unique` from here and end with
``raise SystemExit(rethink_dist.commands.sweep.main(__file__))``.
"""

from rethink_dist.sweep.driver import run_sweep
from rethink_dist.sweep.plan import Sweep, TrialSpec, load_sweep, unique

__all__ = ["Sweep", "TrialSpec", "load_sweep", "run_sweep", "unique"]
