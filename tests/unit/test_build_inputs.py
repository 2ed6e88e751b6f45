"""What `builder build` and `builder stage` hand to docker (issue 29): --tag a valid image reference, --build-arg a
valid KEY and a value on one line, --registry and $BUILDER_REGISTRY a lower-case host[:port]/path, each a full
match. Checked in build.plan(), so a dry run refuses what a real build would, before docker or a file is touched;
tested through the command line and through plan() itself (the command line's check of every word does not see
$BUILDER_REGISTRY, and another caller may skip it)."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
from support.builder import builder_in_process, one_line_error

from builder.core.errors import UserError
from builder.core.values import LINE_BREAKS
from builder.images import build, catalog

TARGET = "llamacpp-cpu"
BREAKS = sorted(LINE_BREAKS) + ["\x00", "\x1b", "\t"]


def dry_run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return builder_in_process("build", TARGET, "--dry-run", *args, check=False, capture_output=True, env={**os.environ, **(env or {})})


def command_of(done: subprocess.CompletedProcess) -> list[str]:
    assert done.returncode == 0, done.stderr
    return shlex.split(done.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def target() -> catalog.Target:
    return catalog.load().get(TARGET)


GOOD_TAGS = ["me/llama", "me/llama:1", "ghcr.io/me/llama:b1234-cu12_blis.2", "localhost:5000/llama", "registry.example:5000/a/b/c:x",
             "[::1]:5000/llama:1", "my-registry.example/team__x/llama-cpp:latest", "me/llama@sha256:" + "a" * 64,
             "me/llama:1@sha256:" + "0f" * 32, "Registry.Example/me/llama:Tag"]
BAD_TAGS = ["Me/llama:1", "me/Llama:1", "me/llama:1; rm -rf ~", "me/llama:", "me/llama:-1", ":1", "me//llama", "me/llama/",
            "-me/llama", "me/llama:" + "x" * 129, "me/" + "x" * 300, "me/llama@sha256:abc", "$(touch x)", "me/llama:1 --push",
            "http://ghcr.io/me/llama", "me/llama:1\n"]


@pytest.mark.parametrize("tag", GOOD_TAGS)
def test_a_valid_tag_reaches_the_command_as_given(tag: str):
    command = command_of(dry_run("--tag", tag))
    assert command[command.index("--tag") + 1] == tag


@pytest.mark.parametrize("tag", BAD_TAGS)
def test_an_invalid_tag_is_one_line_and_prints_no_command(tag: str):
    done = dry_run("--tag", "me/ok:1", "--tag", tag)
    line = one_line_error(done)
    assert done.stdout == "" and "Traceback" not in done.stderr
    assert line.startswith("error: --tag ") or "control character" in line, line


@pytest.mark.parametrize("ch", BREAKS, ids=[f"{ord(c):#06x}" for c in BREAKS])
def test_plan_refuses_a_control_character_in_a_tag_a_build_arg_and_a_registry(target: catalog.Target, ch: str):
    """plan() itself: the command line refuses these words before any command runs, but plan() must not rely on it."""
    for kw, what in (({"tags": (f"me/llama:1{ch}",)}, "--tag"), ({"build_args": (f"K=a{ch}touch x",)}, "--build-arg K="),
                     ({"registry": f"ghcr.io/me{ch}"}, "--registry")):
        with pytest.raises(UserError, match="control character") as refused:
            build.plan(target, {}, **kw)
        assert str(refused.value).startswith(what) and not any(c in str(refused.value) for c in BREAKS), str(refused.value)


@pytest.mark.parametrize(("pair", "says"), [
    ("NOEQUALS", "is not KEY=VALUE"),
    ("=x", "is not KEY=VALUE"),
    ("1KEY=x", "--build-arg '1KEY' is not a build argument name"),
    ("BAD-KEY=x", "--build-arg 'BAD-KEY' is not a build argument name"),
    ("K K=x", "is not a build argument name"),
    ("$(touch x)=y", "is not a build argument name"),
    ("K=a\nb", "control character"),
    ("K=a\u2028b", "control character"),
])
def test_an_invalid_build_arg_is_one_line(pair: str, says: str):
    done = dry_run("--build-arg", pair)
    assert says in one_line_error(done) and done.stdout == ""


def test_a_build_args_value_is_one_argument_whatever_it_holds():
    value = "a b; rm -rf ~ $(touch x) `id` 'q\" = é"
    command = command_of(dry_run("--build-arg", f"_K1={value}", "--build-arg", "EMPTY="))
    args = [command[i + 1] for i, a in enumerate(command) if a == "--build-arg"]
    assert args == [f"_K1={value}", "EMPTY="]


@pytest.mark.parametrize(("registry", "ref"), [
    ("ghcr.io/me", "ghcr.io/me/llamacpp-cpu:"),
    ("ghcr.io/R1kit/", "ghcr.io/r1kit/llamacpp-cpu:"),  # GitHub owners may have capitals: lowered, as tags.py does
    ("registry.example:5000/team/sub", "registry.example:5000/team/sub/llamacpp-cpu:"),
    ("localhost:5000", "localhost:5000/llamacpp-cpu:"),
])
def test_a_valid_registry_starts_the_default_tags(registry: str, ref: str):
    for done in (dry_run("--registry", registry), dry_run(env={"BUILDER_REGISTRY": registry})):
        tags = [a for a in command_of(done) if a.startswith(ref)]
        assert tags, done.stdout


BAD_REGISTRIES = ["; rm -rf ~", "ghcr.io/me; rm -rf ~", "ghcr.io/me $(touch x)", "https://ghcr.io/me", "ghcr.io/me:tag",
                  "ghcr.io//me", "-ghcr.io/me", "ghcr.io:port/me", "ghcr.io/me/" + "é", "ghcr.io/me\n", "ghcr.io/me\r; touch x"]


@pytest.mark.parametrize("registry", BAD_REGISTRIES)
def test_an_invalid_registry_is_one_line_from_the_option_and_from_the_environment(registry: str):
    option = dry_run("--registry", registry)
    assert "--registry" in one_line_error(option) or "control character" in one_line_error(option)
    from_env = dry_run(env={"BUILDER_REGISTRY": registry})
    assert one_line_error(from_env).startswith("error: $BUILDER_REGISTRY ") and from_env.stdout == ""


def test_a_bad_registry_in_the_environment_does_not_stop_a_build_with_its_own_tags():
    """$BUILDER_REGISTRY only makes the default tags: with --tag it is not read, so not checked."""
    assert command_of(dry_run("--tag", "me/llama:1", env={"BUILDER_REGISTRY": "; rm -rf ~"}))


def test_stage_refuses_a_bad_registry_and_writes_nothing(tmp_path: Path):
    out = tmp_path / "context"
    env = {**os.environ, "BUILDER_REGISTRY": "ghcr.io/me\n#SBATCH"}
    done = builder_in_process("stage", TARGET, "-o", str(out), check=False, capture_output=True, env=env)
    assert one_line_error(done).startswith("error: $BUILDER_REGISTRY ")
    assert not out.exists()
    builder_in_process("stage", TARGET, "-o", str(out), capture_output=True, env={**env, "BUILDER_REGISTRY": "ghcr.io/me"})
    assert (out / "Dockerfile").is_file()
