"""The tag scheme (builder/images/tags.py), published variants, `builder tags`, `builder stage` and multi-platform pushes."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support.builder import builder_in_process

from builder.core.errors import UserError
from builder.images import catalog, tags

REPO = Path(__file__).resolve().parents[2]


def builder(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """In-process (BUILDER_DOCKER, BUILDER_ROOT and BUILDER_REGISTRY are read per call, not at import)."""
    return builder_in_process(*args, check=False, capture_output=True, env={**os.environ, **(env or {})})


@pytest.fixture()
def cuda():
    return catalog.load().get("llamacpp-cuda")


@pytest.fixture()
def cpu():
    return catalog.load().get("llamacpp-cpu")


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, ["{v}-cu12", "cu12", "latest"]),
        ({"cuda_version": "12.9.1", "blas": "none"}, ["{v}-cu12", "cu12", "latest"]),  # the defaults, spelled out
        ({"cuda_version": "13.0.2"}, ["{v}-cu13", "cu13"]),
        ({"blas": "blis"}, ["{v}-cu12-blis", "cu12-blis"]),
        ({"cuda_version": "13.0.2", "blas": "blis"}, ["{v}-cu13-blis", "cu13-blis"]),
        ({"cuda_architectures": "90"}, ["{v}-cu12", "cu12"]),  # not the default build: never `latest`
    ],
)
def test_cuda_tags_per_variant(cuda, settings, expected):
    assert tags.tags(cuda, settings) == [t.format(v=cuda.version) for t in expected]


def test_cpu_tags(cpu):
    assert tags.tags(cpu, {}) == [cpu.version, "latest"]
    assert tags.tags(cpu, {"blas": "blis"}) == [f"{cpu.version}-blis", "blis"]


def test_the_versioned_tag_is_the_engine_version_from_image_yaml(cuda):
    # The docs and the stacks name it too: `builder sync` writes them (tests/unit/test_sync.py).
    assert cuda.version == cuda.pin.version
    assert tags.image_refs(cuda, {})[0] == f"ghcr.io/r1kit/llamacpp-cuda:{cuda.version}-cu12"


def test_a_release_writes_only_its_own_immutable_tag(cuda):
    # No alias and no `latest`: a release of an older commit must not move them back.
    assert tags.tags(cuda, {"blas": "blis"}, "v0.2.0") == [f"{cuda.version}-cu12-blis-r1kit0.2.0"]
    assert tags.tags(cuda, {}, "1.0.0-rc.1") == [f"{cuda.version}-cu12-r1kit1.0.0-rc.1"]
    assert tags.tags(cuda, {}, "") == tags.tags(cuda, {})


def test_main_writes_model_inits_version_tag_and_a_release_adds_its_own_like_every_image():
    """Issue 27: the stacks name model-init:<version>, so the first publishing run of main must write it; a release
    writes <versioned tag>-r1kit<X.Y.Z> for model-init as for the engines."""
    init = catalog.load().get("model-init")
    assert tags.is_project_versioned(init)
    assert tags.tags(init, {}) == [init.version, "latest"]
    assert tags.tags(init, {}, sha="0123456789abcdef0123456789abcdef01234567") == [init.version, "latest", "sha-0123456789ab"]
    assert tags.tags(init, {}, f"v{init.version}") == [f"{init.version}-r1kit{init.version}"]
    with pytest.raises(UserError, match="bump it before tagging"):
        tags.tags(init, {}, "v9.9.9")


def test_every_image_gets_the_same_release_tag_shape():
    for target in catalog.load().targets.values():
        release = target.version if tags.is_project_versioned(target) else "3.2.1"
        for v in tags.variants(target):
            versioned = tags.tags(target, v.settings)[0]
            assert tags.tags(target, v.settings, f"v{release}") == [f"{versioned}-r1kit{release}"], (target.name, v.name)


def test_main_adds_an_immutable_per_commit_tag(cuda, cpu):
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert tags.tags(cuda, {"blas": "blis"}, sha=sha) == [f"{cuda.version}-cu12-blis", "cu12-blis", "sha-0123456789ab-cu12-blis"]
    assert tags.tags(cpu, {}, sha=sha) == [cpu.version, "latest", "sha-0123456789ab"]
    with pytest.raises(UserError, match="40-hex"):
        tags.tags(cpu, {}, sha="0123456")
    with pytest.raises(UserError, match="not both"):
        tags.tags(cpu, {}, "v0.1.0", sha)


@pytest.mark.parametrize("bad", ["main", "v1.2", "refs/tags/v1.2.3", "v1.2.3+build"])
def test_a_malformed_release_is_refused(cuda, bad):
    with pytest.raises(UserError):
        tags.tags(cuda, {}, bad)


def test_registry_override_and_lower_case(cuda, monkeypatch):
    assert tags.image_refs(cuda, {}, "ghcr.io/SomeOwner/")[0] == f"ghcr.io/someowner/llamacpp-cuda:{cuda.version}-cu12"
    monkeypatch.setenv("BUILDER_REGISTRY", "registry.example:5000/me")
    assert tags.image_refs(cuda, {})[1] == "registry.example:5000/me/llamacpp-cuda:cu12"


def test_published_variants(cuda, cpu):
    assert [(v.name, v.platforms) for v in tags.variants(cuda)] == [
        ("cu12", ("linux/amd64", "linux/arm64")),
        ("cu13", ("linux/amd64", "linux/arm64")),
        ("cu12-blis", ("linux/amd64",)),
        ("cu13-blis", ("linux/amd64",)),
    ]
    assert [v.name for v in tags.variants(cpu)] == ["default", "blis"]
    assert dict(tags.variant(cuda, "cu13-blis").settings) == {"cuda_version": "13.0.2", "blas": "blis"}
    with pytest.raises(UserError, match="no variant 'cu11'"):
        tags.variant(cuda, "cu11")


def write_image(root: Path, yaml_text: str) -> Path:
    folder = root / "images" / "toy"
    folder.mkdir(parents=True)
    (folder / "Dockerfile.j2").write_text("FROM scratch\nCOPY . /\n")
    (folder / "image.yaml").write_text(yaml_text)
    return folder


TOY = """version: "2.1"
options:
  flavour: {help: a flavour, default: plain, choices: [plain, spicy]}
targets:
  toy:
    platforms: [linux/amd64, linux/arm64]
    tag: "{{ version }}{% if flavour != 'plain' %}-{{ flavour }}{% endif %}"
"""


def test_without_publish_a_target_publishes_its_defaults_everywhere(tmp_path: Path):
    toy = catalog.load_folder(write_image(tmp_path, TOY))[0]
    assert [(v.name, v.platforms, dict(v.settings)) for v in tags.variants(toy)] == [("default", ("linux/amd64", "linux/arm64"), {})]


@pytest.mark.parametrize(
    ("publish", "message"),
    [
        ("[{flavour: sour}]", "not one of"),
        ("[{colour: red}]", "no option 'colour'"),
        ("[{flavour: spicy, platforms: [linux/s390x]}]", "does not support platform"),
        ("[{}, {flavour: plain}]", "twice"),
    ],
)
def test_bad_publish_entries_are_refused_when_the_catalog_loads(tmp_path: Path, publish: str, message: str):
    folder = write_image(tmp_path, TOY + f"    publish: {publish}\n")
    with pytest.raises(UserError, match=message):
        catalog.load_folder(folder)


def test_two_variants_with_one_tag_are_refused(tmp_path: Path):
    text = TOY.replace("{% if flavour != 'plain' %}-{{ flavour }}{% endif %}", "") + "    publish: [{}, {flavour: spicy}]\n"
    toy = catalog.load_folder(write_image(tmp_path, text))[0]
    with pytest.raises(UserError, match="share a tag"):
        tags.variants(toy)


def test_a_tag_template_must_start_with_the_version(tmp_path: Path):
    toy = catalog.load_folder(write_image(tmp_path, TOY.replace('tag: "{{ version }}', 'tag: "v{{ version }}')))[0]
    with pytest.raises(UserError, match="must start with the engine version"):
        tags.tags(toy, {})


# --- the command line -------------------------------------------------------------------------------------------


def test_builder_tags_prints_every_reference(cuda):
    result = builder("tags", "llamacpp-cuda", "--variant", "cu13", "--blas", "blis", "--registry", "ghcr.io/me")
    assert result.returncode == 0, result.stderr
    v = cuda.version
    assert result.stdout.split() == [f"ghcr.io/me/llamacpp-cuda:{v}-cu13-blis", "ghcr.io/me/llamacpp-cuda:cu13-blis"]
    release = builder("tags", "llamacpp-cuda", "--variant", "cu13-blis", "--release", "v0.3.1", "--registry", "ghcr.io/me")
    assert release.stdout.split() == [f"ghcr.io/me/llamacpp-cuda:{v}-cu13-blis-r1kit0.3.1"]


def test_builder_tags_refuses_an_unknown_variant():
    result = builder("tags", "llamacpp-cuda", "--variant", "cu11")
    assert result.returncode == 2 and result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1


@pytest.fixture()
def buildx_client(tmp_path: Path) -> dict[str, str]:
    """$BUILDER_DOCKER pointing at a stand-in client that has buildx (no daemon is asked in a dry run)."""
    client = tmp_path / "docker"
    client.write_text('#!/bin/sh\n[ "$1 $2" = "buildx version" ] && echo "github.com/docker/buildx v0.30.0 0" && exit 0\nexit 1\n')
    client.chmod(0o755)
    return {"BUILDER_DOCKER": str(client)}


def test_push_of_two_platforms_tags_what_ci_tags(buildx_client, cuda):
    result = builder("build", "llamacpp-cuda", "--push", "--platform", "linux/amd64,linux/arm64", "--dry-run", env=buildx_client)
    assert result.returncode == 0, result.stderr
    line = result.stdout.splitlines()[-1]
    assert " buildx build " in line
    assert "--platform linux/amd64,linux/arm64 --push" in line
    refs = [line.split()[i + 1] for i, word in enumerate(line.split()) if word == "--tag"]
    assert refs == builder("tags", "llamacpp-cuda").stdout.split()
    assert refs == [f"ghcr.io/r1kit/llamacpp-cuda:{cuda.version}-cu12", "ghcr.io/r1kit/llamacpp-cuda:cu12", "ghcr.io/r1kit/llamacpp-cuda:latest"]


def test_push_with_a_release_adds_the_stable_tag(buildx_client, cuda):
    result = builder("build", "llamacpp-cuda", "--variant", "cu13", "--release", "v0.2.0", "--push", "--platform", "linux/amd64", "--platform", "linux/arm64", "--dry-run", env=buildx_client)
    assert result.returncode == 0, result.stderr
    assert f"--tag ghcr.io/r1kit/llamacpp-cuda:{cuda.version}-cu13-r1kit0.2.0" in result.stdout
    assert "--tag ghcr.io/r1kit/llamacpp-cuda:latest" not in result.stdout


def test_two_platforms_without_buildx_fail_even_in_a_dry_run(tmp_path: Path):
    client = tmp_path / "docker"
    client.write_text('#!/bin/sh\n[ "$1" = --version ] && echo "Docker version 20.10.24, build 297e128" && exit 0\nexit 1\n')
    client.chmod(0o755)
    result = builder("build", "llamacpp-cuda", "--push", "--platform", "linux/amd64,linux/arm64", "--dry-run", env={"BUILDER_DOCKER": str(client)})
    assert result.returncode == 2 and "buildx" in result.stderr


def test_stage_writes_what_builder_build_stages(tmp_path: Path):
    out = tmp_path / "context"
    result = builder("stage", "llamacpp-cuda", "--variant", "cu13-blis", "--output", str(out))
    assert result.returncode == 0, result.stderr
    # Not the template, the spec, the committed renders for compose (*.Dockerfile), a local source/ folder or the
    # tests' __pycache__ of tiny_gguf.py.
    assert sorted(p.name for p in out.iterdir()) == ["Dockerfile", "amx_tile_check.py", "build.sh", "cpu-variants.c", "entrypoint.sh", "patches", "tiny_gguf.py"]
    rendered = builder("render", "llamacpp-cuda", "--set", "cuda_version=13.0.2", "--blas", "blis").stdout
    assert (out / "Dockerfile").read_text() == rendered
    assert (out / "build.sh").read_bytes() == (REPO / "images" / "llamacpp" / "build.sh").read_bytes()


def test_stage_copies_repo_files_and_refuses_a_used_folder(tmp_path: Path):
    root = tmp_path / "repo"
    write_image(root, TOY + "repo_files: [builder, pyproject.toml]\n")
    shutil.copytree(REPO / "builder", root / "builder", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    out = tmp_path / "context"
    env = {"BUILDER_ROOT": str(root)}
    result = builder("stage", "toy", "--output", str(out), env=env)
    assert result.returncode == 0, result.stderr
    assert (out / "builder" / "images" / "tags.py").is_file() and (out / "pyproject.toml").is_file() and (out / "Dockerfile").is_file()
    again = builder("stage", "toy", "--output", str(out), env=env)
    assert again.returncode == 2 and "not an empty folder" in again.stderr
