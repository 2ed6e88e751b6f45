"""Which compose files `builder up` takes for an engine and a machine, the project they make, and model-init's log
lines as progress (a bar in a terminal, the lines in a log)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from builder.core.errors import UserError
from builder.core.paths import repo_root
from builder.plan.envfile import read_values
from builder.stack.choose import choose, engines, project_of, projects
from builder.stack.up import DownloadView

STACKS = repo_root() / "stacks"


def names(files: tuple[Path, ...]) -> list[str]:
    return [f.name for f in files]


def test_each_engine_with_a_chat_stack_is_found():
    assert set(engines(STACKS)) >= {"llamacpp", "ollama", "vllm", "ktransformers"}


@pytest.mark.parametrize(("engine", "gpu", "files"), [
    ("llamacpp", True, ["llamacpp-webui.yml"]),
    ("llamacpp", False, ["llamacpp-webui.yml", "llamacpp-cpu.yml"]),
    ("ollama", False, ["ollama-webui.yml", "ollama-cpu.yml"]),
    ("vllm", True, ["vllm-webui.yml"]),
])
def test_the_cpu_override_is_added_where_no_gpu_is_planned(engine: str, gpu: bool, files: list[str]):
    stack = choose(STACKS, engine, gpu=gpu)
    assert names(stack.files) == files and stack.project == f"r1kit-{engine}" and stack.gpu is gpu


def test_an_engine_without_a_cpu_stack_is_refused_without_a_gpu():
    with pytest.raises(UserError, match="vllm needs an NVIDIA GPU"):
        choose(STACKS, "vllm", gpu=False)
    with pytest.raises(UserError, match="no stack for engine 'sglang'"):
        choose(STACKS, "sglang", gpu=True)


def test_offline_and_the_users_files_come_last(tmp_path: Path):
    mine = tmp_path / "mine.yml"
    mine.write_text("services: {}\n")
    stack = choose(STACKS, "llamacpp", gpu=False, offline=True, extra=(mine,))
    assert names(stack.files) == ["llamacpp-webui.yml", "llamacpp-cpu.yml", "offline.yml", "mine.yml"]
    with pytest.raises(UserError, match="no such file"):
        choose(STACKS, "llamacpp", gpu=True, extra=(tmp_path / "missing.yml",))


def test_the_project_is_composes_own(monkeypatch: pytest.MonkeyPatch):
    """The file's `name:` (read as a line: the files carry compose's !reset tags), or $COMPOSE_PROJECT_NAME as compose takes it."""
    assert project_of(STACKS / "llamacpp-webui.yml") == "r1kit-llamacpp"
    assert projects(STACKS)["r1kit-ollama"] == "ollama"
    monkeypatch.setenv("COMPOSE_PROJECT_NAME", "mine")
    assert project_of(STACKS / "llamacpp-webui.yml") == "mine"


LOG = [
    "r1-distill-qwen-1.5b: unsloth/DeepSeek-R1-Distill-Qwen-1.5B-GGUF @ 0123456789ab from https://huggingface.co",
    "     1.1 GiB  DeepSeek-R1-Distill-Qwen-1.5B-Q4_K_M.gguf",
    "     1.1 GiB  total in 1 file(s); 1.0 GiB to fetch",
    "destination /models (70.0 GiB free)",
    "download: 1/1 DeepSeek-R1-Distill-Qwen-1.5B-Q4_K_M.gguf (1.1 GiB)",
    "download: total 50% 563.2 MiB/1.1 GiB 10.0 MiB/s, 1 file(s) in flight",
    "done: /models/x.gguf (1.1 GiB)",
]


def test_model_inits_lines_in_a_log_are_passed_on_as_they_are():
    out = io.StringIO()
    view = DownloadView(Console(file=out, force_terminal=False, width=200))
    for line in LOG:
        view.line(line)
    view.close()
    assert out.getvalue().splitlines() == [f"model-init: {line}" for line in LOG]


def test_model_inits_lines_in_a_terminal_become_a_bar():
    out = io.StringIO()
    view = DownloadView(Console(file=out, force_terminal=True, width=120))
    for line in LOG[:6]:
        view.line(line)
    assert view.bar is not None
    task = view.bar.tasks[0]
    assert task.total == int(1.1 * 1024**3) and task.completed == int(563.2 * 1024**2)
    view.close()
    assert "downloading the model" in out.getvalue() and "total 50%" not in out.getvalue()


def test_the_env_values_up_compares_are_the_ones_compose_reads(tmp_path: Path):
    env = tmp_path / ".env"
    env.write_bytes(b"# mine\nMODEL=old\nexport MODEL='r1-distill-qwen-1.5b' # last one wins\nWEBUI_PORT=\"3001\"\nHOME_DIR=$HOME/x\r\nA=\"1\" B=2\n")
    assert read_values(env) == {"MODEL": "r1-distill-qwen-1.5b", "WEBUI_PORT": "3001", "A": "1", "B": "2"}  # $HOME: compose's, not known
    assert read_values(tmp_path / "missing") == {}
