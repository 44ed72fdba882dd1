"""One writer per workdir: an exclusive lock file holding the owner's pid, host and start time.

The lock is a file created with ``O_CREAT | O_EXCL`` (atomic on local and NFS file systems), so two
processes can never both hold it. A lock left behind by a process that died (SIGKILL, power loss)
is recognised as stale when it was taken on this host and its process no longer runs (or the pid now
belongs to a younger process, or the machine has rebooted since), and is then replaced. A lock taken
on another host cannot be checked from here; the message names that host and the file to remove.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Any, Dict, Optional

__all__ = ["LOCK_FILE", "WorkdirBusy", "WorkdirLock", "lock_workdir", "read_lock"]

LOCK_FILE = ".lock"


class WorkdirBusy(RuntimeError):
    """Another live process holds the workdir's lock."""


def _boot_id() -> Optional[str]:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def _proc_start(pid: int) -> Optional[int]:
    """Start time of ``pid`` in clock ticks since boot (Linux), or None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name (field 2) may hold spaces; the fields after its ')' are fixed.
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _owner_record(command: Optional[str]) -> Dict[str, Any]:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": command if command is not None else " ".join(sys.argv), "proc_start": _proc_start(pid),
            "boot_id": _boot_id()}


def read_lock(path: str) -> Optional[Dict[str, Any]]:
    """The owner record of a lock file; ``{}`` for an unreadable one, None when there is none."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        record = json.loads(text)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _is_stale(record: Dict[str, Any]) -> bool:
    """True when the record's process is known to be gone (only decidable on the same host)."""
    pid = record.get("pid")
    if not isinstance(pid, int) or record.get("host") != socket.gethostname():
        return False
    boot = _boot_id()
    if boot is not None and record.get("boot_id") not in (None, boot):
        return True  # taken before the last reboot
    if not _alive(pid):
        return True
    start = record.get("proc_start")
    now = _proc_start(pid)
    return start is not None and now is not None and start != now  # pid reused by another process


def _describe(record: Dict[str, Any]) -> str:
    if not record:
        return "an unknown process (unreadable lock file)"
    text = f"pid {record.get('pid')} on host {record.get('host')}, started {record.get('started')}"
    if record.get("command"):
        text += f" ({record['command']})"
    return text


class WorkdirLock:
    """Context manager holding ``workdir/.lock`` for this process; released on exit.

    Raises :class:`WorkdirBusy` on entry when another live process holds the lock. Re-entrant
    within one process is not supported: a second lock on the same workdir fails like any other.
    """

    def __init__(self, workdir: str, command: Optional[str] = None):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_FILE)
        self.command = command
        self._record: Optional[Dict[str, Any]] = None

    def acquire(self) -> "WorkdirLock":
        os.makedirs(self.workdir, exist_ok=True)
        record = _owner_record(self.command)
        text = json.dumps(record)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_lock(self.path)
                if holder is None:
                    continue  # released meanwhile
                if holder and _is_stale(holder):
                    self._break(holder)
                    continue
                raise WorkdirBusy(
                    f"workdir {self.workdir!r} is in use by {_describe(holder)}; wait for it to finish, or "
                    f"delete {self.path} if that process is gone") from None
            with os.fdopen(fd, "w") as f:
                f.write(text)
            self._record = record
            return self
        raise WorkdirBusy(f"workdir {self.workdir!r}: could not take {self.path} (other processes keep taking it)")

    def _break(self, holder: Dict[str, Any]) -> None:
        # Remove only the stale file that was judged, not a fresh lock another process took meanwhile.
        if read_lock(self.path) == holder:
            print(f"btd-jax: removing the stale lock of {_describe(holder)}: {self.path}", file=sys.stderr)
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def release(self) -> None:
        if self._record is None:
            return
        if read_lock(self.path) == self._record:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        self._record = None

    @property
    def held(self) -> bool:
        return self._record is not None

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_workdir(workdir: str, command: Optional[str] = None) -> WorkdirLock:
    """``with lock_workdir(workdir): ...`` holds the workdir's lock for the block (see :class:`WorkdirLock`)."""
    return WorkdirLock(workdir, command)
