"""How a command stops when it is told to: Ctrl-C (SIGINT), ``kill`` or a machine's shutdown
(SIGTERM), a closed terminal or tmux session (SIGHUP).

Every command ends the same way on each of them: nothing half-written is left, what was recorded
stays recorded, one line says what happened, and the exit code is 128 + the first signal's number
(130, 143, 129). The rules that make this hold at any moment:

- **The interrupt is raised only where Python can unwind it.** A signal handler runs between two
  bytecodes of whatever the main thread executes, and while a module is being imported that can be
  Python code called from C++ (torch's import calls back into Python from its extension): an
  exception raised there cannot cross the C++ frame and the C++ runtime aborts the process (core
  dump, exit -6). Numba's compiler, a fork's hooks and finalizers are the same kind of place
  (the exception is printed as "ignored" and lost), and so is a lock's own Python code (an
  exception between a lock's acquire and its ``with`` block leaks the lock: the exit handlers then
  wait on it for ever). So while such code runs the signal is deferred: the handler has it
  delivered again 50 ms later (by a timer signal, SIGALRM: no thread, no lock), and raises once
  that code has returned (after at most ``MAX_DEFER_S`` it raises wherever it is: a hang is worse).
- **A long job stops gracefully on the first signal.** Inside :func:`graceful` (the sweep driver
  around Tune's loop) the first signal calls the job's own stop (no exception): Tune stops starting
  trials and the results already reported land. A second signal raises the interrupt.
- **Libraries do not take the signals from us.** ``ray.init`` installs its own SIGTERM handler
  (``sys.exit``), and Ray's native crash handler prints a stack dump and aborts on SIGTERM:
  :func:`kept_from` keeps Ray's Python handler out and puts ours back after the call, and
  :func:`deferred` holds a signal until ``ray.init`` has returned.
- **Each new signal cuts the stop shorter.** After a graceful stop, the next signal raises the
  interrupt: the command unwinds, its ``finally`` blocks remove what they had half-written. Once the
  command has printed its line and runs its exit handlers (Ray's shutdown), a signal ends the process
  there and then, with the same exit code: every file is written atomically (write beside, rename
  over), so what was recorded stays as it was.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import Callable, Iterator

from rethink_dist.files import INTERRUPTED

SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))
MAX_DEFER_S = 60.0  # imports and compiles that hold a signal longer than this are interrupted where they stand
RETRY_S = 0.05  # a deferred signal is asked for again this often

# phase: None, "graceful" (the job's stop was called), "raised" (KeyboardInterrupt raised: the command
# unwinds; a new signal raises it again) or "exiting" (the exit handlers run: a new signal ends it now)
_FRESH = {"installed": False, "first": None, "graceful": None, "deferred_since": None, "phase": None, "pending": None,
          "exit_code": None,
          "defer": 0}
_state: dict = dict(_FRESH)


def name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def received() -> int | None:
    """The first stop signal this process handled, or None."""
    return _state["first"]


def exit_code(default: int = 130) -> int:
    """128 + the first signal's number (130 SIGINT, 143 SIGTERM, 129 SIGHUP); ``default`` if none came."""
    first = _state["first"]
    return 128 + first if first else default


def how() -> str:
    """'interrupted' (Ctrl-C, or no signal) or 'stopped by SIGTERM' / 'stopped by SIGHUP'."""
    first = _state["first"] or signal.SIGINT
    return "interrupted" if first == signal.SIGINT else f"stopped by {name(first)}"


def stopped_line(prog: str = "rethink-dist") -> str:
    """The one line a command prints when a signal stopped it."""
    return f"{prog}: {how()}"


# Python code that native code calls back (an exception raised there cannot unwind through it, or
# is printed as "Exception ignored" and lost): importlib (an extension module's init), numba's
# compiler (llvmlite's ctypes callbacks), a fork's hooks (logging's lock release after os.fork,
# multiprocessing starting a child) and finalizers (__del__, weakref callbacks).
NATIVE_FILES = ("<frozen importlib", f"{os.sep}llvmlite{os.sep}", f"{os.sep}numba{os.sep}")
# by function name only: the at-fork hooks, not the code around a fork (a parent waiting for its
# children must still take the signal at once)
NATIVE_FUNCTIONS = {"__del__", "_releaseLock", "_acquireLock", "_after_fork", "_at_fork_reinit",
                    "_after_at_fork_child_reinit_locks", "_run_after_forkers"}


# The Python code of locks and queues: an exception raised between a lock's acquire and the
# ``with`` block that owns it leaks the lock (Condition.__enter__ has taken it, its __exit__ never
# runs), and the exit handlers then wait on it for ever (multiprocessing's queue finalizer did).
LOCK_FILES = tuple(f"{os.sep}{name}" for name in ("threading.py", "queue.py", f"multiprocessing{os.sep}queues.py",
                                                   f"multiprocessing{os.sep}synchronize.py"))


def _importing(frame) -> bool:
    """Whether the main thread's stack holds Python code run under native frames (an import: a
    module's top-level code, importlib; numba's compiler; a fork's hooks; a finalizer), or its
    innermost frame is a lock's or a queue's own code."""
    if frame is not None and frame.f_code.co_filename.endswith(LOCK_FILES):
        return True
    while frame is not None:
        code = frame.f_code
        if code.co_name in NATIVE_FUNCTIONS or any(n in code.co_filename for n in NATIVE_FILES):
            return True
        if code.co_name == "<module>" and frame.f_globals.get("__name__") != "__main__":
            return True
        frame = frame.f_back
    return False


def _ask_again(signum: int) -> None:
    """Deliver ``signum`` again in RETRY_S, by a timer signal (SIGALRM): a thread or a lock here
    could deadlock with the very lock the interrupted code holds."""
    _state["pending"] = signum
    signal.setitimer(signal.ITIMER_REAL, RETRY_S)


def _on_alarm(_signum: int, frame) -> None:
    pending = _state["pending"]
    _state["pending"] = None
    if pending is not None:
        _deliver(pending, frame, asked=True)


def _handler(signum: int, frame) -> None:
    _deliver(signum, frame, asked=False)


def _deliver(signum: int, frame, asked: bool) -> None:
    """A stop signal (or one held earlier, ``asked`` again): stop gracefully, hold it, or raise."""
    if not asked and _state["pending"] is not None:
        return  # one is already held: it is delivered when the held code returns
    phase = _state["phase"]
    if phase == "exiting":  # the command is ending (its last line printed): a new signal ends it at once
        if not asked:
            os._exit(_state["exit_code"] if _state["exit_code"] is not None else exit_code())
        return
    if phase is None and _state["graceful"] is not None:  # a graceful stop raises nothing: safe anywhere
        _state.update(phase="graceful", first=signum)
        _state["graceful"](signum)
        return
    now = time.monotonic()
    if _state["defer"] or _importing(frame):
        since = _state["deferred_since"] = _state["deferred_since"] or now
        if now - since < MAX_DEFER_S:
            _ask_again(signum)
            return
    _state.update(deferred_since=None, phase="raised", first=_state["first"] or signum)
    INTERRUPTED.set()
    raise KeyboardInterrupt


def install() -> Callable[[], None]:
    """Take SIGINT, SIGTERM and SIGHUP (on the main thread; elsewhere nothing happens). Returns the
    function that gives the previous handlers back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, _on_alarm)  # a held signal's second delivery
    _state.update(_FRESH, installed=True)
    INTERRUPTED.clear()

    def restore() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        _state.update(installed=False, graceful=None)

    return restore


def installed() -> bool:
    return _state["installed"] and threading.current_thread() is threading.main_thread()


def reclaim() -> None:
    """Put our handlers back where a library replaced them (``ray.init``); a no-op unless installed."""
    if installed():
        for s in SIGNALS:
            signal.signal(s, _handler)


@contextlib.contextmanager
def graceful(stop: Callable[[int], None]) -> Iterator[None]:
    """While inside, the first stop signal calls ``stop(signum)`` instead of raising; the next raises."""
    if not installed():
        yield
        return
    before = _state["graceful"]
    _state["graceful"] = stop
    try:
        yield
    finally:
        _state["graceful"] = before


def _close_progress_bars() -> None:
    """A progress bar the interrupt cut short (FFCV's writer draws them) ends its line, so that the
    command's own line starts a line of its own."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or ()):
        with contextlib.suppress(Exception):
            bar.close()


def exiting(code: int) -> None:
    """The command has returned ``code`` and the process is ending (Ray's shutdown and the other
    exit handlers still run): a signal from here on ends it at once with that code, instead of
    killing it by the signal's default action once the handlers were given back."""
    _state.update(phase="exiting", exit_code=code)


def stopped(e: BaseException, prog: str = "rethink-dist", exit_process: bool = False) -> int:
    """A command's end after a KeyboardInterrupt: its one line (the exception's text, else
    :func:`stopped_line`) and 128 + the signal's number. ``exit_process`` (the command itself, not a
    caller in Python): end the process with that code now, whatever Python thinks (:func:`exit_now`)."""
    _state["phase"] = "exiting"
    _close_progress_bars()
    text = str(e).strip()
    print(f"{prog}: {text}" if text else stopped_line(prog), file=sys.stderr, flush=True)
    if exit_process:
        exit_now(exit_code())
    return exit_code()


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """While inside, a signal is held (as during an import) and raised once the block has ended:
    for library calls that run C++ which calls back into Python (``ray.init``)."""
    _state["defer"] += 1
    try:
        yield
    finally:
        _state["defer"] -= 1


@contextlib.contextmanager
def kept_from(module, attribute: str) -> Iterator[None]:
    """While inside, ``module.attribute`` (a library's function that installs its own signal handler,
    such as Ray's ``set_sigterm_handler``) does nothing when our handlers are installed; afterwards
    ours are put back wherever the library's native code replaced them."""
    original = getattr(module, attribute, None)
    if installed() and callable(original):
        setattr(module, attribute, lambda *a, **k: None)
    try:
        yield
    finally:
        if callable(original):
            setattr(module, attribute, original)
        reclaim()


def exit_now(code: int) -> None:
    """End the process with ``code`` now, after the exit handlers (Ray's shutdown among them) and with
    the streams flushed. Used once a signal stopped the command: a Ctrl-C that arrived while an
    extension ran Python code leaves CPython's "unhandled KeyboardInterrupt" mark even once caught,
    and CPython would then end the process by the signal itself instead of our exit code."""
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
