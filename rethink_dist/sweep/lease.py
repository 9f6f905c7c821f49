"""One driver per sweep: a lease file in the sweep's results folder (``driver.lease``).

Two drivers of one sweep would run two Tune experiments in the same ``tune/`` folder and train and
checkpoint the same trials at once. The first driver takes the lease; a second one is refused in
one line that names the holder (host, pid, since when, last renewed).

The lease is a small JSON file created with ``O_EXCL`` (one creator wins) and renewed (rewritten
with a new ``renewed`` time) every ``RENEW_S`` seconds by a thread of the driver. It is stale, and a
new driver takes it over, when

- its host is this host and its pid is not alive (or is alive but started after the lease: a reused
  pid): a driver that died without removing it does not block ``--resume``;
- its host is another host and it has not been renewed for ``STALE_S`` seconds.

What it protects: drivers that share the results folder (the same machine, or the same network
file system). What it does not: two drivers that write their results folders on different
machines (``--results-dir`` is local while ``--storage`` is a bucket) share only the bucket, where
no lease lives; nor clocks that disagree by more than ``STALE_S`` across hosts.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from rethink_dist.errors import SweepError

LEASE_FILE = "driver.lease"
RENEW_S = 10.0
STALE_S = 60.0


def _process_start(pid: int) -> float | None:
    """The start time (seconds since the epoch) of a process on this host, or None if none runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0.0  # alive, start unknown


def _alive(holder: dict[str, Any], now: float) -> bool:
    if holder.get("host") == socket.gethostname():
        started = _process_start(int(holder.get("pid", -1)))
        # a pid that is alive but started after the lease was taken is another process (a reused pid)
        return started is not None and started <= float(holder.get("since", now)) + 1.0
    return now - float(holder.get("renewed", 0)) < STALE_S


def _describe(holder: dict[str, Any], now: float) -> str:
    return (f"pid {holder.get('pid')} on {holder.get('host')}, since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(float(holder.get('since', now))))}, "
            f"renewed {now - float(holder.get('renewed', now)):.0f} s ago")


class Lease:
    """The sweep's driver lease in ``folder``; ``with Lease(folder, sweep):`` holds it."""

    def __init__(self, folder: str | os.PathLike, sweep: str):
        self.path = Path(folder) / LEASE_FILE
        self.sweep = sweep
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self, flags: int) -> None:
        data = json.dumps({**self.me, "renewed": time.time(), "sweep": self.sweep}).encode()
        fd = os.open(self.path, flags, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # being written this instant, or damaged: treat by its age
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return None
            return {"host": "?", "pid": "?", "since": time.time() - age, "renewed": time.time() - age}

    def acquire(self) -> None:
        for _ in range(3):
            try:
                self._write(os.O_WRONLY | os.O_CREAT | os.O_EXCL)
                break
            except FileExistsError:
                holder = self._read()
                now = time.time()
                if holder is None:
                    continue  # removed meanwhile: try again
                if _alive(holder, now):
                    raise SweepError(f"sweep {self.sweep!r} is being run by another driver ({_describe(holder, now)}; "
                                     f"lease {str(self.path)!r}): wait for it to end or stop it, then --resume")
                # stale: take it over (a rename is atomic; a racing driver's O_EXCL then fails again)
                tmp = self.path.with_name(f".{LEASE_FILE}.{os.getpid()}")
                with open(tmp, "w") as f:
                    json.dump({**self.me, "renewed": time.time(), "sweep": self.sweep}, f)
                os.replace(tmp, self.path)
                break
        else:
            raise SweepError(f"could not take the driver lease {str(self.path)!r} of sweep {self.sweep!r}")
        self._thread = threading.Thread(target=self._renew, name="rethink-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_S):
            holder = self._read()
            if holder is not None and (holder.get("pid"), holder.get("host")) != (self.me["pid"], self.me["host"]):
                return  # taken over (this driver was thought dead): leave it to its new holder
            try:
                tmp = self.path.with_name(f".{LEASE_FILE}.{os.getpid()}")
                tmp.write_text(json.dumps({**self.me, "renewed": time.time(), "sweep": self.sweep}))
                os.replace(tmp, self.path)
            except OSError:  # a full or failing disk: the sweep's own checks report it
                pass

    def release(self) -> None:
        self._stop.set()
        holder = self._read()
        if holder is not None and (holder.get("pid"), holder.get("host")) == (self.me["pid"], self.me["host"]):
            try:
                self.path.unlink(missing_ok=True)
            except OSError:  # a storage turned read-only: the lease stays, stale once this process ends
                pass

    def __enter__(self) -> "Lease":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
