"""Workdir lock: exclusive, names its holder, detects stale locks of dead processes."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from btd_jax.runtime import lock as lock_mod
from btd_jax.runtime import WorkdirBusy, lock_workdir, read_lock


def test_lock_is_exclusive_and_released(tmp_path):
    wd = str(tmp_path / "wd")
    with lock_workdir(wd, command="btd-jax train") as held:
        record = read_lock(held.path)
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        with pytest.raises(WorkdirBusy, match=rf"pid {os.getpid()} on host .*btd-jax train.*delete .*\.lock"):
            lock_workdir(wd).acquire()
    assert not os.path.exists(os.path.join(wd, ".lock"))
    with lock_workdir(wd):  # free again
        pass


def _write(path, record):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f)


def test_stale_lock_of_dead_process_is_replaced(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = str(tmp_path / ".lock")
    _write(path, {"pid": dead.pid, "host": socket.gethostname(), "started": "then"})
    with lock_workdir(str(tmp_path)) as held:
        assert read_lock(held.path)["pid"] == os.getpid()
    assert "stale lock" in capsys.readouterr().err


def test_reused_pid_and_reboot_count_as_stale(tmp_path):
    me = lock_mod._owner_record(None)
    path = str(tmp_path / ".lock")
    _write(path, dict(me, proc_start=me["proc_start"] - 1))  # same pid, older process: pid was reused
    with lock_workdir(str(tmp_path)):
        pass
    if me["boot_id"] is not None:
        _write(path, dict(me, boot_id="another-boot"))
        with lock_workdir(str(tmp_path)):
            pass


def test_lock_on_another_host_or_unreadable_is_respected(tmp_path):
    path = str(tmp_path / ".lock")
    _write(path, {"pid": 1, "host": "elsewhere.example", "started": "2024-01-01 00:00:00"})
    with pytest.raises(WorkdirBusy, match="pid 1 on host elsewhere.example"):
        lock_workdir(str(tmp_path)).acquire()
    with open(path, "w") as f:
        f.write("garbage")
    with pytest.raises(WorkdirBusy, match="unknown process"):
        lock_workdir(str(tmp_path)).acquire()
    assert open(path).read() == "garbage"  # never removed behind the user's back


_HOLDER = """
import sys, time
from btd_jax.runtime import lock_workdir
with lock_workdir(sys.argv[1], command="holder"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_lock_held_by_a_live_process_then_killed(tmp_path):
    wd = str(tmp_path)
    child = subprocess.Popen([sys.executable, "-c", _HOLDER, wd], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirBusy, match=rf"pid {child.pid} .*\(holder\)"):
            lock_workdir(wd).acquire()
        child.send_signal(signal.SIGKILL)  # no clean-up: the lock file stays behind
        child.wait(timeout=30)
        assert read_lock(os.path.join(wd, ".lock"))["pid"] == child.pid
        deadline = time.monotonic() + 10
        while lock_mod._alive(child.pid) and time.monotonic() < deadline:  # reaped, but be safe
            time.sleep(0.05)
        with lock_workdir(wd) as held:
            assert read_lock(held.path)["pid"] == os.getpid()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
