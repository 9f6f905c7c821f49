"""The ``rethink-dist`` command. Each subcommand is a module in ``rethink_dist.commands`` with
``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; modules are found by name,
and heavy libraries (torch, ray, mlflow, ffcv) are imported only inside ``run`` so ``--help``
stays fast.

Errors a user can fix (bad flags, bad config values, missing data) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import signal
import sys
import threading

from rethink_dist.errors import UsageError, UserError
from rethink_dist.files import INTERRUPTED

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        raise UsageError(f"{self.prog}: {message}")


def _commands() -> list:
    import rethink_dist.commands as pkg

    mods = [importlib.import_module(f"{pkg.__name__}.{m.name}") for m in pkgutil.iter_modules(pkg.__path__)]
    return sorted((m for m in mods if hasattr(m, "NAME")), key=lambda m: m.NAME)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rethink-dist", description="Zhang et al. (ICLR 2017) randomization tests, at scale.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for mod in _commands():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _on_sigint(signum, frame) -> None:
    INTERRUPTED.set()
    raise KeyboardInterrupt


def _exit_interrupted() -> None:
    """Exit with 130 now. A Ctrl-C that arrived while an extension ran Python code (an import
    inside numba or torch) leaves CPython's "unhandled KeyboardInterrupt" mark even once we caught
    it, and CPython would then end the process by SIGINT (-2) instead of our 130. The exit handlers
    run first (Ray's shutdown among them) and the streams are flushed."""
    import atexit
    import os

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


def main(argv: list[str] | None = None) -> int:
    # First of all: a Ctrl-C while the commands' libraries load must reach us, not one of them.
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _on_sigint) if on_main else None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "_run", None):
            parser.print_help()
            return EXIT_USAGE
        rc = int(args._run(args) or 0)
        if INTERRUPTED.is_set():  # a library swallowed the KeyboardInterrupt; the command still stops as 130
            raise KeyboardInterrupt
        return rc
    except KeyboardInterrupt:
        print("rethink-dist: interrupted", file=sys.stderr)
        if argv is None:  # the command itself (not a caller in Python): end with 130, whatever Python thinks
            _exit_interrupted()
        return EXIT_INTERRUPTED
    except Exception as e:
        if isinstance(e, UserError):
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            print(msg if msg.startswith("rethink-dist") else f"rethink-dist: error: {msg}", file=sys.stderr)
            return EXIT_USAGE
        raise
    finally:
        if on_main and previous is not None:
            signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(main())
