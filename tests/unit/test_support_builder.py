"""tests/support/builder.py's in-process runner: what a test sees is what a `builder` process would give, and
nothing the command changes in the process (signal handlers, os.environ, cwd) outlives the call."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from support.builder import builder_in_process


def test_stdout_and_stderr_apart_and_the_exit_status():
    ok = builder_in_process("list", "--json", capture_output=True)
    assert ok.returncode == 0 and ok.stdout.startswith("[") and ok.stderr == ""
    bad = builder_in_process("render", "no-such-target", check=False, capture_output=True)
    assert bad.returncode == 2 and bad.stdout == "" and bad.stderr.count("\n") == 1
    assert bad.stderr.startswith("error: unknown target 'no-such-target': choose one of ")


def test_check_raises_as_subprocess_does():
    with pytest.raises(subprocess.CalledProcessError) as failed:
        builder_in_process("render", "no-such-target", capture_output=True)
    assert failed.value.returncode == 2 and "unknown target" in failed.value.stderr


def test_the_commands_signal_handlers_cwd_and_environment_are_put_back(tmp_path):
    def mine(signum, frame):
        pass

    before = (signal.getsignal(signal.SIGINT), os.getcwd(), dict(os.environ))
    old_term = signal.signal(signal.SIGTERM, mine)
    try:
        result = builder_in_process("list", "--json", capture_output=True, cwd=tmp_path, env={"PATH": "/nonexistent", "ONLY": "1"})
        assert result.returncode == 0
        assert signal.getsignal(signal.SIGTERM) is mine  # the CLI installed its own (own_signals) during the call
    finally:
        signal.signal(signal.SIGTERM, old_term)
    assert (signal.getsignal(signal.SIGINT), os.getcwd(), dict(os.environ)) == before


def test_the_environment_is_the_one_given(tmp_path):
    """As subprocess's env=: BUILDER_ROOT pointing at a folder without images/ is refused by the command."""
    result = builder_in_process("list", check=False, capture_output=True, env={**os.environ, "BUILDER_ROOT": str(tmp_path)})
    assert result.returncode == 2 and f"no images/ folder under {tmp_path}" in result.stderr


def test_an_exception_the_command_lets_out_is_status_1_and_a_traceback(monkeypatch):
    from builder.images import catalog

    def broken(*args, **kwargs):
        raise RuntimeError("a bug, not a user error")

    monkeypatch.setattr(catalog, "load", broken)
    result = builder_in_process("list", check=False, capture_output=True)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("Traceback (most recent call last):") and result.stderr.endswith("RuntimeError: a bug, not a user error\n")
