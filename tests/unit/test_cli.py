"""The CLI contract: list, render, build --dry-run, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import shlex

import pytest
from support.builder import builder_in_process as builder
from support.prerequisites import REPO

from builder.images import catalog


def test_list_json_names_every_target_with_platforms():
    rows = json.loads(builder("list", "--json", capture_output=True).stdout)
    by_name = {r["name"]: r for r in rows}
    assert {"llamacpp-cuda", "llamacpp-cpu"} <= set(by_name)
    assert by_name["llamacpp-cuda"]["platforms"] == ["linux/amd64", "linux/arm64"]
    assert by_name["llamacpp-cuda"]["options"]["blas"]["choices"] == ["none", "blis"]


def test_render_to_stdout_and_to_a_folder(tmp_path):
    out = builder("render", "llamacpp-cuda", "--blas", "blis", capture_output=True).stdout
    assert out.startswith("# llama.cpp for NVIDIA GPUs (CUDA), with AMD BLIS")
    builder("render", "llamacpp-cuda", "--blas", "blis", "-o", str(tmp_path / "out"), capture_output=True)
    assert (tmp_path / "out" / "Dockerfile").read_text() == out


def test_build_dry_run_prints_the_docker_command(tmp_path):
    source = tmp_path / "llama.cpp"
    source.mkdir()
    out = builder("build", "llamacpp-cpu", "--source", str(source), "--build-arg", "BLIS_SOURCE=distro",
                  "--blas", "blis", "--tag", "me/llama:1", "--dry-run", capture_output=True).stdout
    command = shlex.split(out.splitlines()[-1])
    assert "build" in command and command[-1] == "<context>"
    assert command[command.index("--tag") + 1] == "me/llama:1"
    args = [command[i + 1] for i, a in enumerate(command) if a == "--build-arg"]
    assert args == ["LLAMACPP_SOURCE=local", "BLIS_SOURCE=distro"]


def test_dry_run_default_tag_follows_the_scheme_and_names_the_verified_source():
    out = builder("build", "llamacpp-cuda", "--set", "cuda_version=13.0.2", "--dry-run", capture_output=True).stdout
    pin = catalog.load().pins["llamacpp"]
    assert f"ghcr.io/r1kit/llamacpp-cuda:{pin.version}-cu13 " in out
    assert f"# fetches llamacpp {pin.version}: {pin.source_url} (sha256 {pin.sha256}), its {pin.source_tree}/" in out
    # A local source replaces the download: the dry run no longer says it fetches one.
    local = builder("build", "llamacpp-cpu", "--source", str(REPO / "images/llamacpp"), "--dry-run", capture_output=True).stdout
    assert "# fetches" not in local and "LLAMACPP_SOURCE=local" in local


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["render", "llamacpp-rocm"], "unknown target 'llamacpp-rocm'"),
        (["render", "llamacpp-cpu", "--set", "cuda_architectures=90"], "has no option 'cuda_architectures'"),
        (["render", "llamacpp-cpu", "--set", "blas"], "is not KEY=VALUE"),
        (["render", "llamacpp-cpu", "--blas", "openblas"], "blas='openblas' is not one of none, blis"),
        (["render", "model-init", "--blas", "blis"], "target model-init has no option 'blas'"),
        (["render", "model-init", "--set", "blas=blis"], "target model-init has no option 'blas'"),
        (["build", "model-init", "--source", "llamacpp2=/tmp", "--dry-run"], "takes no --source 'llamacpp2'"),
        (["render", "llamacpp-cuda", "--set", "cuda_architectures=sm_90"], "cuda_architectures='sm_90' is malformed"),
        (["render", "llamacpp-cuda", "--set", "cuda_architectures=90,120"], "is malformed"),
        (["build", "llamacpp-cpu", "--platform", "linux/s390x", "--dry-run"], "does not support platform 'linux/s390x'"),
        (["build", "llamacpp-cpu", "--source", "/no/such/llama.cpp", "--dry-run"], "--source /no/such/llama.cpp does not exist"),
        (["build", "llamacpp-cpu", "--build-arg", "NOEQUALS", "--dry-run"], "is not KEY=VALUE"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    out_dir = tmp_path / "out"
    if args[0] == "render":
        args = [*args, "-o", str(out_dir)]
    result = builder(*args, check=False, capture_output=True)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not out_dir.exists()


def one_line(result) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["render", "stage"])
def test_an_output_folder_under_a_regular_file_is_one_line(tmp_path, command):
    afile = tmp_path / "afile"
    afile.write_text("a regular file\n")
    line = one_line(builder(command, "llamacpp-cpu", "-o", str(afile / "sub"), check=False, capture_output=True))
    assert f"{afile} is not a folder" in line, line
    assert afile.read_text() == "a regular file\n"


@pytest.mark.parametrize(("args", "message"), [
    (["render", "llamacpp-cpu", "--bogus"], "--bogus"),
    (["render"], "TARGET"),
    (["no-such-command"], "no-such-command"),
    (["build", "llamacpp-cpu", "--platform"], "--platform"),
])
def test_usage_errors_are_one_line_with_the_help_hint(args, message):
    line = one_line(builder(*args, check=False, capture_output=True))
    assert message in line and "--help" in line, line


@pytest.mark.parametrize(("args", "length"), [
    (["render", "llamacpp-cpu", "--set", "blas=" + "x" * 100_000], 100_005),
    (["render", "llamacpp-cpu", "--set", "y" * 100_000], 100_000),
    (["render", "x" * 100_000], 100_000),
    (["tags", "llamacpp-cpu", "--release", "v" * 100_000], 100_000),
    # Under the command line's limit (4096), the command's own check answers, as briefly.
    (["render", "llamacpp-cpu", "--set", "blas=" + "x" * 4000], 4000),
    (["tags", "llamacpp-cpu", "--release", "v" * 4000], 4000),
])
def test_an_error_echoes_at_most_a_bit_of_a_huge_value(args, length):
    line = one_line(builder(*args, check=False, capture_output=True))
    assert len(line) < 400 and f"{length} characters" in line, line


def test_a_source_folder_that_holds_the_output_is_refused(tmp_path):
    """`--source NAME=/tmp -o /tmp/ctx` once copied /tmp into /tmp/ctx into itself until the disk was full."""
    out = tmp_path / "ctx"
    line = one_line(builder("stage", "model-init", "--source", f"llamacpp={tmp_path}", "-o", str(out), check=False, capture_output=True))
    assert f"--source llamacpp={tmp_path} holds the folder" in line, line
    assert not out.exists()
