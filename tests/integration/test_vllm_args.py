"""The vLLM stack's exact `vllm serve` arguments, as `docker compose config` resolves them for several settings,
parsed by vLLM's own parser (tests/support/vllm_parse.py in the cached venv of tests/support/vllm_venv.py), and our
preflight refusing what vLLM's parser lets through. The image itself runs the same parse (tests/integration/
test_vllm_image.py, opt-in: it is 9 GB).

Marked slow and kept out of the unit tier (moved from tests/unit): the parser's venv is about 3.5 GB, built from
PyPI by the first run (about 4 minutes); later runs reuse it. No Docker needed:
`pytest -m slow tests/integration/test_vllm_args.py`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from support.prerequisites import REPO
from support.vllm_venv import VLLM_VERSION, vllm_parse, vllm_parser_python
from support.vllm_settings import SETTINGS, vllm_command

pytestmark = pytest.mark.slow

PREFLIGHT = REPO / "images" / "vllm" / "preflight.py"


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    return vllm_parser_python()


def test_the_stacks_arguments_parse_in_vllms_own_parser(vllm_python: Path):
    commands = {name: vllm_command(env) for name, (env, _) in SETTINGS.items()}
    out = vllm_parse(vllm_python, list(commands.values()))
    assert out["vllm"] == VLLM_VERSION and out["parser"].endswith("cli_args"), out
    for (name, (_, want)), result in zip(SETTINGS.items(), out["results"]):
        assert "ok" in result, f"{name}: vLLM refused {commands[name]}: {result}"
        got = {k: result["ok"][k] for k in want}
        assert got == want, name


def test_the_parser_under_test_refuses_what_vllm_refuses(vllm_python: Path):
    """The check can fail: an unknown option or a malformed number is an error in vLLM's parser."""
    out = vllm_parse(vllm_python, [["/models/m", "--no-such-option=1"], ["/models/m", "--max-num-seqs=many"]])
    assert all("error" in r for r in out["results"]), out


def test_what_vllms_parser_lets_through_our_preflight_refuses(vllm_python: Path):
    """vLLM 0.33.0's parser accepts a negative tensor parallel size and an unknown reasoning parser (it would fail
    later, in the engine); the image's preflight, run by the same Python as in the image, refuses both in one line."""
    bad = {"VLLM_TENSOR_PARALLEL_SIZE": "-2", "VLLM_REASONING_PARSER": "deepseek-r1"}
    commands = [vllm_command({k: v}) for k, v in bad.items()]
    out = vllm_parse(vllm_python, commands)
    assert [r["ok"]["tensor_parallel_size"] for r in out["results"][:1]] == [-2]
    assert [r["ok"]["reasoning_parser"] for r in out["results"][1:]] == ["deepseek-r1"]
    for command, says in zip(commands, ["--tensor-parallel-size must be positive, not -2",
                                        "--reasoning-parser 'deepseek-r1' is not one vLLM knows: choose one of "]):
        result = subprocess.run([str(vllm_python), str(PREFLIGHT), *command], capture_output=True, text=True, timeout=60,
                                env={"PATH": "/usr/bin:/bin"})
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], result.stderr
    # ... and reads the names from the installed vLLM: R1's parser is among them.
    ok = subprocess.run([str(vllm_python), str(PREFLIGHT), *vllm_command({})], capture_output=True, text=True, timeout=60,
                        env={"PATH": "/usr/bin:/bin"})
    assert ok.returncode == 0, ok.stderr
