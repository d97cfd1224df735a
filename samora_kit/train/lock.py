"""A run folder has one owner: the process holding `run.lock` for the whole run.

The lock is an OS file lock (flock), so it dies with its holder: a folder left by a killed run is
taken over by the next one, which says so. The file itself keeps the holder's pid and host, so a
second run on a folder in use is refused at once, naming who holds it. Taking a folder over also
removes the temporary files of saves a kill interrupted (`.<name>.<random>.tmp`)."""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from ..errors import SamoraError, WriteError, describe_os_error

LOCK_FILE = "run.lock"


@contextmanager
def run_folder_lock(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir` while the block runs; SamoraError at once if another live process holds it."""
    if run_dir.exists() and not run_dir.is_dir():
        raise SamoraError(f"{run_dir}: is a file; run.output_dir must name a folder (new or a run's)")
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise SamoraError(f"{run_dir} is in use by {holder}; wait for that run to end, or give this one "
                          "another run.output_dir") from None
    try:
        handle.seek(0)
        previous = handle.read().strip()
        handle.seek(0)
        handle.truncate()
        holder = f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now(timezone.utc).isoformat(timespec='seconds')}\n"
        try:  # unbuffered: a full disk fails here, naming the file, and leaves nothing to flush at release
            os.write(handle.fileno(), holder.encode())
        except OSError as exc:
            raise WriteError(f"{run_dir / LOCK_FILE}: cannot be written ({describe_os_error(exc)})") from None
        removed = remove_interrupted_writes(run_dir)
        if previous or removed:
            Console(stderr=True).print(
                f"{escape(str(run_dir))}: taking over from a run that ended without releasing it"
                + (f" ({escape(previous)})" if previous else "")
                + (f"; removed {removed} temporary file(s) of interrupted saves" if removed else ""),
                highlight=False)
        yield
    finally:
        handle.seek(0)
        handle.truncate()  # released cleanly: the next run has nothing to take over
        handle.close()  # closing drops the flock
        if created and [p.name for p in run_dir.iterdir()] == [LOCK_FILE]:
            (run_dir / LOCK_FILE).unlink()  # the run failed before writing anything: leave no folder behind
            run_dir.rmdir()


def remove_interrupted_writes(run_dir: Path) -> int:
    """Delete the temporary files atomic writes leave when killed mid-save; returns how many."""
    count = 0
    for path in run_dir.rglob(".*.tmp"):
        if path.is_file():
            path.unlink()
            count += 1
    return count
