"""Graceful stop: real SIGTERM/SIGINT sent to a subprocess finish the current step, then exit cleanly."""

import signal
import subprocess
import sys

import pytest

from btd_jax.runtime import GracefulStop, exit_code

_LOOP = """
import sys, time
from btd_jax.runtime import GracefulStop, Stopped
try:
    with GracefulStop() as stop:
        for step in range(1, 10_000):
            time.sleep(0.02)              # the "step": never cut short
            print(f"step {step}", flush=True)
            if stop.requested:
                print(f"saved {step}", flush=True)
                raise Stopped(f"stopped by {stop.name} after step {step}", stop.signum, step)
except Stopped as e:
    print(e, file=sys.stderr)
    sys.exit(e.exit_code)
except KeyboardInterrupt:
    print("forced", file=sys.stderr)
    sys.exit(99)
"""


def _start():
    """The child, once it is in its loop, and the first line it printed."""
    child = subprocess.Popen([sys.executable, "-c", _LOOP], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = child.stdout.readline()
    assert first.startswith("step ")
    return child, first


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_the_step_and_exits_with_one_line(sig):
    child, first = _start()
    child.send_signal(sig)
    out, err = child.communicate(timeout=30)
    lines = (first + out).splitlines()  # a signal during step 1 leaves only "saved 1" after the first line
    assert lines[-1].startswith("saved ") and lines[-2] == "step " + lines[-1].split()[1]
    assert err.strip().splitlines() == [f"stopped by {signal.Signals(sig).name} after step {lines[-1].split()[1]}"]
    assert child.returncode == exit_code(sig) == 128 + sig


def test_handlers_restored_and_second_sigint_is_immediate():
    # A background job starts with SIGINT ignored; the test needs Python's usual handler to hand back to.
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _second_sigint_is_immediate()
    finally:
        signal.signal(signal.SIGINT, outer)


def _second_sigint_is_immediate():
    before = signal.getsignal(signal.SIGTERM)
    with GracefulStop() as stop:
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        stop._handle(signal.SIGINT, None)  # the first signal hands control back to the old handlers
        assert stop.requested and stop.name == "SIGINT"
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) == before
