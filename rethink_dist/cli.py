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
import sys

from rethink_dist import stopping
from rethink_dist.errors import UsageError, UserError, WriteFailed
from rethink_dist.files import INTERRUPTED

EXIT_USAGE = 2
EXIT_FAILED = 1


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


def main(argv: list[str] | None = None) -> int:
    # First of all: a Ctrl-C, SIGTERM or SIGHUP while the commands' libraries load must reach us,
    # not one of them (rethink_dist/stopping.py says how each is delivered).
    restore = stopping.install()
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "_run", None):
            parser.print_help()
            return EXIT_USAGE
        rc = int(args._run(args) or 0)
        if INTERRUPTED.is_set():  # a library swallowed the KeyboardInterrupt; the command still stops
            raise KeyboardInterrupt
        if argv is None:  # the process ends next: keep the handlers through its exit handlers
            stopping.exiting(rc)
            restore = lambda: None  # noqa: E731
        return rc
    except KeyboardInterrupt as e:
        return stopping.stopped(e, exit_process=argv is None)
    except WriteFailed as e:
        print(f"rethink-dist: error: {e.strerror}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as e:
        if isinstance(e, UserError):
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            print(msg if msg.startswith("rethink-dist") else f"rethink-dist: error: {msg}", file=sys.stderr)
            return EXIT_USAGE
        raise
    finally:
        restore()


if __name__ == "__main__":
    sys.exit(main())
