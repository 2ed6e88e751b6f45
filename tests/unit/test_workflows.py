"""The GitHub workflows, checked offline: schema, zizmor, SHA pins, and that the images workflow builds the catalog."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support.builder import builder_in_process

from builder.images import catalog, stack_images

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
IMAGES = REPO / ".github" / "workflows" / "images.yml"
# `uses: owner/repo[/path]@<40 hex> # vX.Y.Z`: an immutable commit, and the release it is, for the reviewer and Dependabot.
PINNED = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}$")
USES_LINE = re.compile(r"^\s*(?:-\s+)?uses:\s*(\S+)\s*(#.*)?$")
VERSION_COMMENT = re.compile(r"^#\s*v\d+\.\d+\.\d+\s*$")


def tool(name: str) -> str:
    """A command installed with the test extras, found beside this Python when PATH lacks it."""
    return shutil.which(name) or str(Path(sys.executable).parent / name)


def builder(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """In-process (BUILDER_DOCKER, BUILDER_ROOT and BUILDER_REGISTRY are read per call, not at import)."""
    return builder_in_process(*args, check=False, capture_output=True, env={**os.environ, **(env or {})})


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_there_are_workflows():
    assert {p.name for p in WORKFLOWS} >= {"test.yml", "images.yml", "bump.yml"}


# --- schema ---------------------------------------------------------------------------------------------------


def check_jsonschema(schema: str, *files: Path) -> subprocess.CompletedProcess:
    return subprocess.run([tool("check-jsonschema"), "--builtin-schema", schema, *map(str, files)], capture_output=True, text=True)


def test_every_workflow_matches_the_github_workflow_schema():
    result = check_jsonschema("vendor.github-workflows", *WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dependabot_config_matches_its_schema():
    result = check_jsonschema("vendor.dependabot", REPO / ".github" / "dependabot.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_a_broken_workflow(tmp_path: Path):
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    step: []\n")
    assert check_jsonschema("vendor.github-workflows", bad).returncode != 0


# --- zizmor -----------------------------------------------------------------------------------------------------


def zizmor(path: Path) -> subprocess.CompletedProcess:
    # --offline: nothing here reaches GitHub; the audits that need it (impostor commits, known-vulnerable
    # actions) are left to Dependabot and review.
    return subprocess.run([tool("zizmor"), "--offline", "--no-progress", str(path)], capture_output=True, text=True, cwd=REPO)


def test_zizmor_finds_nothing():
    result = zizmor(REPO / ".github" / "workflows")
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_flags_an_unpinned_credential_leaking_workflow(tmp_path: Path):
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        "on: pull_request_target\npermissions: write-all\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n"
        "      - uses: actions/checkout@v4\n      - run: echo ${{ github.event.pull_request.title }}\n"
    )
    assert zizmor(bad).returncode != 0


# --- pins -------------------------------------------------------------------------------------------------------


def unpinned(text: str) -> list[str]:
    """Every `uses:` of a third-party action that is not a full commit SHA with a # vX.Y.Z comment."""
    bad = []
    for line in text.splitlines():
        match = USES_LINE.match(line)
        if not match:
            continue
        ref, comment = match.group(1).strip("'\""), match.group(2) or ""
        if ref.startswith("./"):
            continue  # an action of this repository: pinned by the checkout itself
        if ref.startswith("docker://") or not PINNED.match(ref) or not VERSION_COMMENT.match(comment):
            bad.append(line.strip())
    return bad


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_every_third_party_action_is_pinned_by_commit_sha(workflow: Path):
    text = workflow.read_text()
    assert "uses:" in text
    assert unpinned(text) == []


def test_every_uses_is_seen_by_the_pin_check():
    # The line-based check must see every `uses:` the YAML holds, or it could miss one.
    for workflow in WORKFLOWS:
        jobs = load(workflow)["jobs"].values()
        in_yaml = [s["uses"] for j in jobs for s in j.get("steps", []) if "uses" in s] + [j["uses"] for j in jobs if "uses" in j]
        seen = [USES_LINE.match(l).group(1) for l in workflow.read_text().splitlines() if USES_LINE.match(l)]
        assert sorted(in_yaml) == sorted(seen), workflow.name


@pytest.mark.parametrize(
    "line",
    [
        "      - uses: actions/checkout@v4",
        "      - uses: aquasecurity/trivy-action@0.28.0",
        "      - uses: actions/checkout@11bd719",
        "      - uses: actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683",  # no version comment
        "        uses: docker/login-action@master # v3.5.0",
        "      - uses: docker://alpine:3",
    ],
)
def test_the_pin_check_rejects(line: str):
    assert unpinned(line) == [line.strip()]


def test_the_pin_check_accepts_a_sha_with_its_version():
    assert unpinned("      - uses: actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683 # v4.2.2\n      - uses: ./local") == []


# --- least privilege --------------------------------------------------------------------------------------------


def test_workflows_grant_nothing_by_default_and_checkouts_keep_no_credentials():
    for workflow in WORKFLOWS:
        spec = load(workflow)
        assert spec.get("permissions") in ({}, {"contents": "read"}), workflow.name
        for name, job in spec["jobs"].items():
            assert "timeout-minutes" in job, f"{workflow.name}: {name}"
            for step in job.get("steps", []):
                if step.get("uses", "").startswith("actions/checkout@"):
                    assert step.get("with", {}).get("persist-credentials") is False, f"{workflow.name}: {name}"


def test_images_workflow_grants_write_only_where_it_pushes_or_signs():
    jobs = load(IMAGES)["jobs"]
    assert jobs["plan"]["permissions"] == {"contents": "read"}
    assert jobs["build"]["permissions"] == {"contents": "read", "packages": "write"}
    assert jobs["merge"]["permissions"] == {"contents": "read", "packages": "write", "id-token": "write", "attestations": "write"}
    assert jobs["verify"]["permissions"] == {"contents": "read", "packages": "read"}
    assert jobs["scan"]["permissions"] == {"contents": "read", "packages": "read", "security-events": "write"}
    assert jobs["stacks"]["permissions"] == {"contents": "read"}


def test_test_workflow_runs_the_readme_test_command():
    job = load(REPO / ".github" / "workflows" / "test.yml")["jobs"]["test"]
    assert job["runs-on"] == "ubuntu-24.04"
    assert [s["run"] for s in job["steps"] if "run" in s] == ["bash .ci/run"]
    assert "bash tests/run" in (REPO / ".ci" / "run").read_text()
    assert "bash tests/run" in (REPO / "README.md").read_text()


# --- the images workflow builds the catalog ---------------------------------------------------------------------


def step(job: dict, name: str) -> dict:
    return next(s for s in job["steps"] if s.get("name") == name or s.get("id") == name)


def uses(job: dict, action: str) -> dict:
    return next(s for s in job["steps"] if s.get("uses", "").startswith(action + "@"))


def test_plan_job_takes_both_matrices_from_builder_matrix():
    spec = load(IMAGES)
    plan = spec["jobs"]["plan"]
    script = step(plan, "matrix")["run"]
    assert 'gate=$(builder publish-gate --event "$EVENT" --ref "$REF" --sha "$SHA")\n' in script
    for job in ("build", "merge"):
        assert f'{job}=$(builder matrix --job {job} --registry "$REGISTRY" --release "$release" --sha "$sha" --source "$SOURCE")\n' in script
        assert f'echo "{job}=${job}" >> "$GITHUB_OUTPUT"' in script
    assert step(plan, "matrix")["env"]["REF"] == "${{ github.ref }}"
    assert plan["outputs"] == {
        "publish": "${{ steps.matrix.outputs.publish }}",
        "build": "${{ steps.matrix.outputs.build }}",
        "merge": "${{ steps.matrix.outputs.merge }}",
    }
    assert spec["jobs"]["build"]["strategy"]["matrix"] == {"include": "${{ fromJSON(needs.plan.outputs.build) }}"}
    assert spec["jobs"]["merge"]["strategy"]["matrix"] == {"include": "${{ fromJSON(needs.plan.outputs.merge) }}"}


def matrix(job: str, *extra: str, env: dict[str, str] | None = None) -> list[dict]:
    result = builder("matrix", "--job", job, "--registry", "ghcr.io/r1kit", *extra, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def targets(env: dict[str, str] | None = None) -> list[dict]:
    result = builder("list", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_build_matrix_covers_every_target_variant_and_platform():
    builds = {(r["target"], r["variant"], r["platform"]) for r in matrix("build")}
    # Every target publishes, but one whose image.yaml says `publish: []` (ktransformers-legacy: never built here).
    unpublished = {t.name for t in catalog.load().targets.values() if not t.published}
    listed = [t for t in targets() if t["name"] not in unpublished]
    assert listed and unpublished <= {"ktransformers-legacy"}
    for t in listed:
        assert t["variants"], t["name"]
        for v in t["variants"]:
            for platform in v["platforms"]:
                assert (t["name"], v["name"], platform) in builds
        # Every platform of the target is published by at least its default variant.
        assert {p for (name, _, p) in builds if name == t["name"]} == set(t["platforms"])
    assert len(builds) == sum(len(v["platforms"]) for t in listed for v in t["variants"])


def test_merge_matrix_has_one_entry_per_variant_with_its_tags():
    merges = matrix("merge")
    listed = targets()
    assert {(r["target"], r["variant"]) for r in merges} == {(t["name"], v["name"]) for t in listed for v in t["variants"]}
    for row in merges:
        variant = next(v for t in listed if t["name"] == row["target"] for v in t["variants"] if v["name"] == row["variant"])
        assert row["metadata_tags"].splitlines() == [f"type=raw,value={tag}" for tag in variant["tags"]]
        assert row["image"] == f"ghcr.io/r1kit/{row['target']}"


def test_build_matrix_uses_native_runners_and_per_platform_caches():
    for row in matrix("build"):
        assert row["runner"] == {"linux/amd64": "ubuntu-24.04", "linux/arm64": "ubuntu-24.04-arm"}[row["platform"]]
        assert row["cache"] == f"ghcr.io/r1kit/{row['target']}:buildcache-{row['variant']}-{row['arch']}"
        assert row["artifact"] == f"digest-{row['target']}-{row['variant']}-{row['arch']}"
        assert row["jobs"] == 4


def test_the_shipped_variants():
    builds = {(r["target"], r["variant"], r["arch"]) for r in matrix("build")}
    assert builds >= {
        ("llamacpp-cuda", "cu12", "amd64"),
        ("llamacpp-cuda", "cu12", "arm64"),
        ("llamacpp-cuda", "cu13", "amd64"),
        ("llamacpp-cuda", "cu13", "arm64"),
        ("llamacpp-cuda", "cu12-blis", "amd64"),
        ("llamacpp-cuda", "cu13-blis", "amd64"),
        ("llamacpp-cpu", "default", "amd64"),
        ("llamacpp-cpu", "default", "arm64"),
        ("llamacpp-cpu", "blis", "amd64"),
    }
    # AMD's BLIS is built for Zen: no arm64 BLIS images.
    assert not any(v.endswith("blis") and a == "arm64" for (_, v, a) in builds)


def test_a_new_image_folder_joins_the_matrix_with_no_workflow_edit(tmp_path: Path):
    shutil.copytree(REPO / "images", tmp_path / "images")
    (tmp_path / "images" / "toy").mkdir()
    (tmp_path / "images" / "toy" / "Dockerfile.j2").write_text("FROM scratch\n")
    (tmp_path / "images" / "toy" / "image.yaml").write_text(
        "version: '1.0'\ntargets:\n  toy-cpu:\n    platforms: [linux/arm64]\n"
    )
    env = {"BUILDER_ROOT": str(tmp_path)}
    assert ("toy-cpu", "default", "linux/arm64", "ubuntu-24.04-arm") in {
        (r["target"], r["variant"], r["platform"], r["runner"]) for r in matrix("build", env=env)
    }
    assert any(r["target"] == "toy-cpu" and "type=raw,value=latest" in r["metadata_tags"] for r in matrix("merge", env=env))


def cuda_version() -> str:
    return next(t["version"] for t in targets() if t["name"] == "llamacpp-cuda")


def test_release_tags_reach_the_matrix():
    rows = matrix("merge", "--release", "v0.1.0")
    cuda = next(r for r in rows if r["target"] == "llamacpp-cuda" and r["variant"] == "cu12")
    assert cuda["metadata_tags"].splitlines() == [f"type=raw,value={cuda_version()}-cu12-r1kit0.1.0"]
    init = next(r for r in rows if r["target"] == "model-init")
    assert init["tags"].splitlines() == ["ghcr.io/r1kit/model-init:0.1.0-r1kit0.1.0"]


def test_build_job_builds_the_staged_context_of_its_matrix_entry():
    build = load(IMAGES)["jobs"]["build"]
    assert build["runs-on"] == "${{ matrix.runner }}"
    stage = step(build, "Stage the build context")
    assert stage["env"] == {"TARGET": "${{ matrix.target }}", "VARIANT": "${{ matrix.variant }}"}
    assert 'builder" stage "$TARGET" --variant "$VARIANT" --output "$RUNNER_TEMP/context"' in stage["run"]
    push = uses(build, "docker/build-push-action")["with"]
    assert push["context"] == "${{ runner.temp }}/context"
    assert push["platforms"] == "${{ matrix.platform }}"
    assert push["provenance"] == "mode=max" and push["sbom"] is True
    assert push["outputs"] == "type=image,push-by-digest=true,name-canonical=true,push=${{ needs.plan.outputs.publish == 'true' }}"
    assert push["cache-from"] == "type=registry,ref=${{ matrix.cache }}"
    assert "mode=max" in push["cache-to"] and "needs.plan.outputs.publish" in push["cache-to"]
    assert "setup-qemu" not in IMAGES.read_text()
    free = step(build, "Free disk space")
    assert build["steps"].index(free) == 0 and "/usr/share/dotnet" in free["run"]


def test_pull_requests_neither_log_in_nor_push_nor_merge():
    spec = load(IMAGES)
    assert "pull_request" in spec[True]  # PyYAML reads the `on:` key as True
    for name in ("Log in to GHCR", "Export the digest", "Upload the digest"):
        assert step(spec["jobs"]["build"], name)["if"] == "needs.plan.outputs.publish == 'true'"
    assert "needs.plan.outputs.publish == 'true'" in spec["jobs"]["merge"]["if"]
    # The gate: a pull request never publishes (tests/unit/test_publish_run.py has every case).
    gate = builder("publish-gate", "--event", "pull_request", "--ref", "refs/heads/main")
    assert "publish=false" in gate.stdout.splitlines()


def test_merge_job_tags_signs_and_scans_the_pushed_digest():
    merge = load(IMAGES)["jobs"]["merge"]
    assert uses(merge, "actions/download-artifact")["with"]["pattern"] == "${{ matrix.artifact_pattern }}"
    assert "docker buildx imagetools create" in step(merge, "index")["run"]
    assert step(merge, "index")["env"]["TAGS"] == "${{ matrix.tags }}"
    assert step(merge, "Sign the index and every platform's manifest (keyless)")["run"] == 'cosign sign --yes --recursive "$IMAGE@$DIGEST"'
    scan = load(IMAGES)["jobs"]["scan"]
    assert uses(scan, "aquasecurity/trivy-action")["with"]["image-ref"] == "${{ steps.ref.outputs.ref }}"
    assert uses(scan, "github/codeql-action/upload-sarif")


def test_schedule_and_releases_rebuild():
    on = load(IMAGES)[True]
    assert on["schedule"] and "workflow_dispatch" in on
    assert on["push"]["tags"] == ["v*.*.*"]


def test_plan_step_script_writes_both_matrices_for_a_release(tmp_path: Path):
    # Run the step's own shell script, as the runner would, with `builder` from this environment.
    script = step(load(IMAGES)["jobs"]["plan"], "matrix")["run"]
    output = tmp_path / "github_output"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "REGISTRY": "ghcr.io/R1kit",
        "SOURCE": "https://github.com/R1kit/r1kit",
        "EVENT": "push",
        "REF": "refs/tags/v0.1.0",
        "SHA": "0" * 40,
        "GITHUB_OUTPUT": str(output),
    }
    result = subprocess.run(["bash", "-e", "-c", script], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines())
    assert outputs["publish"] == "true" and outputs["release"] == "v0.1.0"
    source = ("--source", "https://github.com/R1kit/r1kit")
    assert json.loads(outputs["build"]) == matrix("build", "--release", "v0.1.0", *source)
    assert json.loads(outputs["merge"]) == matrix("merge", "--release", "v0.1.0", *source)


def test_plan_step_script_fails_on_a_broken_catalog(tmp_path: Path):
    shutil.copytree(REPO / "images", tmp_path / "images")
    spec = tmp_path / "images" / "llamacpp" / "image.yaml"
    spec.write_text(spec.read_text().replace('- {cuda_version: "13.0.2"}', '- {cuda_version: "11.8.0"}', 1))
    script = step(load(IMAGES)["jobs"]["plan"], "matrix")["run"]
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "REGISTRY": "ghcr.io/r1kit",
        "SOURCE": "",
        "EVENT": "pull_request",
        "REF": "refs/pull/1/merge",
        "SHA": "0" * 40,
        "GITHUB_OUTPUT": str(tmp_path / "github_output"),
        "BUILDER_ROOT": str(tmp_path),
    }
    result = subprocess.run(["bash", "-e", "-c", script], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "11.8.0" in result.stderr


# --- publishing from a fork (docs/publishing.md "Publish from your fork") ---------------------------------------


def fork_section() -> str:
    page = (REPO / "docs" / "publishing.md").read_text()
    start = page.index("## Publish from your fork")
    end = page.find("\n## ", start)
    return " ".join(page[start:end if end >= 0 else None].split())  # lines joined: a name may wrap


def test_the_fork_steps_name_the_variable_secret_and_permissions_the_bump_workflow_reads():
    section = fork_section()
    job = next(iter(load(REPO / ".github" / "workflows" / "bump.yml")["jobs"].values()))
    token = uses(job, "actions/create-github-app-token")["with"]
    assert token["client-id"] == "${{ vars.BUMP_APP_CLIENT_ID }}" and "variable `BUMP_APP_CLIENT_ID`" in section
    assert token["private-key"] == "${{ secrets.BUMP_APP_PRIVATE_KEY }}" and "secret `BUMP_APP_PRIVATE_KEY`" in section
    assert (token["permission-contents"], token["permission-pull-requests"]) == ("write", "write")
    assert "Contents and Pull requests, both read and write" in section


def test_the_fork_steps_name_the_jobs_and_pages_the_images_workflow_shows():
    section = fork_section()
    jobs = load(IMAGES)["jobs"]
    assert jobs["stacks"]["name"].startswith("stack defaults pull anonymously") and '"stack defaults pull anonymously"' in section
    assert jobs["merge"]["name"] == "publish ${{ matrix.target }} ${{ matrix.variant }}" and "`publish <image> <variant>`" in section
    # The images workflow needs no secret but the run's own token.
    assert set(re.findall(r"secrets\.(\w+)", IMAGES.read_text())) == {"GITHUB_TOKEN"} and "`GITHUB_TOKEN`" in section
    for owner_type, kind in (("User", "users"), ("Organization", "orgs")):
        page = stack_images.settings_url("ghcr.io/<owner>/<image>:1", owner_type).replace("%3C", "<").replace("%3E", ">")
        assert page == f"https://github.com/{kind}/<owner>/packages/container/<image>/settings" and page in section


def test_the_stacks_follow_the_registry_variable_the_fork_steps_name():
    section = fork_section()
    assert "`R1KIT_REGISTRY=ghcr.io/<owner>` in `stacks/.env`" in section
    assert "# R1KIT_REGISTRY=ghcr.io/r1kit" in (REPO / "stacks" / ".env.example").read_text()
    result = builder("stack-images", "--registry", "ghcr.io/SomeFork")
    assert result.returncode == 0, result.stderr
    refs = result.stdout.split()
    assert refs and all(r.startswith("ghcr.io/somefork/") for r in refs)
    # No stack names our registry but through R1KIT_REGISTRY's default.
    for path in (REPO / "stacks").rglob("*.yml"):
        text = path.read_text()
        assert text.count("ghcr.io/r1kit") == text.count("${R1KIT_REGISTRY:-ghcr.io/r1kit}"), path.name
