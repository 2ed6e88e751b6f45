"""`builder up`'s plan step for each engine it offers: the plan is made and the stack chosen before any question,
file or container (bring_up refuses an unanswerable question next, which is where these runs stop). The machine is
described, as `builder plan --gpus ...` describes one: this host has neither the GPU nor the RAM R1 needs."""

from __future__ import annotations

import pytest
from support.builder import builder_in_process as builder

from builder.plan import hardware

DESCRIBE = hardware.describe


@pytest.fixture
def r1_box(monkeypatch):
    """`builder up` sees one 24 GB GPU, 512 GiB of RAM and 32 AVX-512 cores (no GPU with --cpu, as on a real host)."""
    def described(*, gpus=None, **_):
        return DESCRIBE(gpus="none" if gpus == "none" else "1xRTX4090", ram_gib=512, cores=32, cpu="avx512", numa=1)
    monkeypatch.setattr(hardware, "describe", described)


def up(tmp_path, *args):
    return builder("up", *args, "--env-file", str(tmp_path / ".env"), check=False, capture_output=True)


def test_up_with_ktransformers_gets_past_the_plan_to_the_question(r1_box, tmp_path):
    result = up(tmp_path, "--engine", "ktransformers")
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error: stdin is not a terminal"), result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / ".env").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--engine", "ktransformers", "--cpu"], "ktransformers runs attention, the dense layers and the shared experts on an NVIDIA GPU"),
    (["--engine", "foo"], "--engine 'foo': the planner knows llamacpp, ollama, vllm, ktransformers"),
])
def test_up_refuses_what_the_plan_refuses_in_one_line(r1_box, tmp_path, args, message):
    result = up(tmp_path, *args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / ".env").exists()
