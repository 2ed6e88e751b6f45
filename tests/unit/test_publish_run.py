"""A whole run of the images workflow, offline: the plan step's own script decides what to publish; every build row
writes a fake digest artifact named as the workflow names it; each merge downloads with its pattern under
minimatch semantics (wcmatch), runs its own step script against a stand-in `docker`, and must write exactly the
tags `builder tags` prints, into an index holding exactly the variant's platforms. Also: the publish gate, the
publishing page's (docs/publishing.md) cosign identity and its tables against what a run would publish."""

from __future__ import annotations

import hashlib
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
from wcmatch import glob as wglob

from builder.images import catalog, stack_images
from builder.images import workflow as ci

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / ".github" / "workflows" / "images.yml"
PUBLISHING = (REPO / "docs" / "publishing.md").read_text()
SHA = "0123456789abcdef0123456789abcdef01234567"
BIN = Path(sys.executable).parent
# download-artifact filters artifact names with `new Minimatch(pattern)` and its defaults: braces and extglobs
# expanded, `*` not crossing `/`, no dotfiles.
MINIMATCH = wglob.BRACE | wglob.EXTGLOB | wglob.GLOBSTAR


def minimatch(name: str, pattern: str) -> bool:
    return wglob.globmatch(name, pattern, flags=MINIMATCH)


def workflow() -> dict:
    return yaml.safe_load(IMAGES.read_text())


def step(job: dict, name: str) -> dict:
    return next(s for s in job["steps"] if s.get("name") == name or s.get("id") == name)


def uses(job: dict, action: str) -> dict:
    return next(s for s in job["steps"] if s.get("uses", "").startswith(action + "@"))


def builder(*args: str) -> subprocess.CompletedProcess:
    return builder_in_process(*args, check=False, capture_output=True)


def expand(value: str, row: dict, outputs: dict | None = None) -> str:
    """${{ matrix.X }}, ${{ runner.temp }} and ${{ steps.S.outputs.O }} as the runner substitutes them."""
    def sub(m: re.Match) -> str:
        expr = m.group(1).strip()
        if expr.startswith("matrix."):
            return str(row[expr[len("matrix."):]])
        if expr == "runner.temp":
            return row["__temp"]
        if expr.startswith("steps.") and outputs is not None:
            return outputs[expr]
        raise AssertionError(f"unexpected expression {expr}")
    return re.sub(r"\$\{\{(.*?)\}\}", sub, value)


def run_script(script: str, env: dict, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True, text=True)


# --- the stand-in registry ----------------------------------------------------------------------------------------

FAKE_DOCKER = r'''#!/usr/bin/env python3
"""docker buildx imagetools create/inspect against a JSON file: what a registry would hold."""
import hashlib, json, os, sys
state = os.environ["FAKE_REGISTRY"]
reg = json.load(open(state)) if os.path.exists(state) else {"tags": {}, "blobs": {}, "calls": []}
args = sys.argv[1:]
reg["calls"].append(args)
if args[:2] == ["manifest", "inspect"]:
    # As a user asks: no credentials anywhere the client would look.
    config = os.environ.get("DOCKER_CONFIG", "")
    if not config or os.path.exists(os.path.join(config, "config.json")):
        sys.exit("this stand-in answers anonymous clients only (DOCKER_CONFIG set to an empty folder)")
    ref = args[2]
    json.dump(reg, open(state, "w"))
    if ref.rsplit(":", 1)[0] in reg.get("private", []):
        sys.exit("errors:\ndenied: requested access to the resource is denied\nunauthorized: authentication required")
    if ref not in reg["tags"]:
        sys.exit(f"no such manifest: {ref}")
    print(reg["blobs"][reg["tags"][ref]])
    sys.exit(0)
assert args[:2] == ["buildx", "imagetools"], args
if args[2] == "create":
    rest, tags, notes, refs = args[3:], [], {}, []
    while rest:
        a = rest.pop(0)
        if a == "--tag": tags.append(rest.pop(0))
        elif a == "--annotation":
            k, _, v = rest.pop(0).removeprefix("index:").partition("="); notes[k] = v
        else: refs.append(a)
    manifests = []
    for ref in refs:
        digest = ref.split("@", 1)[1]
        os_, arch = reg["platforms"][digest].split("/")
        manifests.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "platform": {"os": os_, "architecture": arch}})
        manifests.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "a" * 64,
                          "platform": {"os": "unknown", "architecture": "unknown"},
                          "annotations": {"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": digest}})
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests, "annotations": notes}
    raw = json.dumps(index)
    digest = "sha256:" + hashlib.sha256(raw.encode()).hexdigest()
    reg["blobs"][digest] = raw
    for t in tags: reg["tags"][t] = digest
elif args[2] == "inspect":
    ref = args[3] if args[3] != "--raw" else args[4]
    digest = ref.split("@", 1)[1] if "@" in ref else reg["tags"][ref]
    if "--raw" in args: print(reg["blobs"][digest])
    else: print(json.dumps({"digest": digest}))
json.dump(reg, open(state, "w"))
'''


@pytest.fixture()
def fake_path(tmp_path: Path) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER.replace("#!/usr/bin/env python3", f"#!{sys.executable}", 1))
    docker.chmod(0o755)
    # `gh api users/OWNER --jq .type`, as GitHub answers it: User or Organization.
    gh = bin_dir / "gh"
    gh.write_text('#!/bin/sh\n[ "$1 $3 $4" = "api --jq .type" ] && echo "${FAKE_OWNER_TYPE:-Organization}" && exit 0\nexit 1\n')
    gh.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}"


def plan(tmp_path: Path, event: str, ref: str, owner: str = "R1kit") -> dict:
    """The plan job's step script, as the runner runs it."""
    spec = step(workflow()["jobs"]["plan"], "matrix")
    tmp_path.mkdir(parents=True, exist_ok=True)
    output = tmp_path / "plan_output"
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "REGISTRY": f"ghcr.io/{owner}",  # ghcr.io/${{ github.repository_owner }}
        "SOURCE": "https://github.com/R1kit/r1kit",
        "EVENT": event,
        "REF": ref,
        "SHA": SHA,
        "GITHUB_OUTPUT": str(output),
    }
    assert set(spec["env"]) == {"REGISTRY", "SOURCE", "EVENT", "REF", "SHA"}
    result = run_script(spec["run"], env)
    assert result.returncode == 0, result.stderr
    out = dict(line.split("=", 1) for line in output.read_text().splitlines())
    assert set(out) >= {"publish", "build", "merge"}, "the job outputs the plan declares"
    return {"publish": out["publish"], "build": json.loads(out["build"]), "merge": json.loads(out["merge"]), "gate": out}


def fake_digest(row: dict) -> str:
    return hashlib.sha256(f"{row['target']} {row['variant']} {row['platform']}".encode()).hexdigest()


def build_artifacts(tmp_path: Path, rows: list[dict], failed: set[tuple[str, str, str]] = frozenset()) -> tuple[Path, dict]:
    """Each build row's "Export the digest" step script, then its upload under the row's artifact name."""
    build = workflow()["jobs"]["build"]
    export = step(build, "Export the digest")
    assert uses(build, "actions/upload-artifact")["with"]["name"] == "${{ matrix.artifact }}"
    store = tmp_path / "artifacts"
    platforms = {}
    for row in rows:
        if (row["target"], row["variant"], row["arch"]) in failed:
            continue
        temp = tmp_path / "runner" / row["artifact"]
        temp.mkdir(parents=True)
        digest = fake_digest(row)
        env = {**os.environ, "RUNNER_TEMP": str(temp), **{k: expand(v, row | {"__temp": str(temp)}, {"steps.build.outputs.digest": f"sha256:{digest}"}) for k, v in export["env"].items()}}
        result = run_script(export["run"], env)
        assert result.returncode == 0, result.stderr
        assert row["artifact"] not in {p.name for p in store.glob("*")}, "two builds upload one artifact name"
        shutil.copytree(temp / "digests", store / row["artifact"])
        platforms[f"sha256:{digest}"] = row["platform"]
    return store, platforms


def download(store: Path, pattern: str, dest: Path) -> list[str]:
    """download-artifact with `pattern` and merge-multiple: every matching artifact's files into one folder."""
    names = sorted(p.name for p in store.iterdir() if minimatch(p.name, pattern)) if store.exists() else []
    dest.mkdir(parents=True)
    for name in names:
        shutil.copytree(store / name, dest, dirs_exist_ok=True)
    return names


def merge(tmp_path: Path, row: dict, store: Path, platforms: dict, path: str, registry: Path | None = None) -> subprocess.CompletedProcess:
    """One merge job: download with its pattern, then its "Create the multi-arch tags" step script."""
    job = workflow()["jobs"]["merge"]
    temp = tmp_path / "merge" / f"{row['target']}-{row['variant']}"
    temp.mkdir(parents=True)
    ctx = row | {"__temp": str(temp)}
    dl = uses(job, "actions/download-artifact")["with"]
    assert dl["merge-multiple"] is True
    download(store, expand(dl["pattern"], ctx), Path(expand(dl["path"], ctx)))
    registry = registry or tmp_path / "registry.json"
    if not registry.exists():
        registry.write_text(json.dumps({"tags": {}, "blobs": {}, "calls": [], "platforms": platforms}))
    spec = step(job, "index")
    env = {**os.environ, "PATH": path, "RUNNER_TEMP": str(temp), "GITHUB_OUTPUT": str(temp / "out"), "FAKE_REGISTRY": str(registry),
           **{k: expand(v, ctx) for k, v in spec["env"].items()}}
    return run_script(spec["run"], env)


def published(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "registry.json").read_text())["tags"]


# --- a whole run --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "ref", "release", "sha"),
    [("push", "refs/heads/main", None, SHA), ("schedule", "refs/heads/main", None, None), ("push", "refs/tags/v0.1.0", "v0.1.0", None)],
    ids=["push-main", "schedule", "release"],
)
def test_a_whole_run_publishes_exactly_builder_tags_per_variant(tmp_path: Path, fake_path: str, event, ref, release, sha):
    run = plan(tmp_path, event, ref)
    assert run["publish"] == "true"
    store, platforms = build_artifacts(tmp_path, run["build"])
    for row in run["merge"]:
        result = merge(tmp_path, row, store, platforms, fake_path)
        assert result.returncode == 0, result.stderr
    tags_written = published(tmp_path)
    expected = {}
    for row in run["merge"]:
        args = ["tags", row["target"], "--variant", row["variant"], "--registry", "ghcr.io/R1kit"]
        args += ["--release", release] if release else []
        args += ["--sha", sha] if sha else []
        refs = builder(*args).stdout.split()
        assert refs, args
        for r in refs:
            expected[r] = (row["target"], row["variant"])
        # The index holds exactly one image per platform of the variant: never another variant's.
        index = json.loads(json.loads((tmp_path / "registry.json").read_text())["blobs"][tags_written[refs[0]]])
        images = [m for m in index["manifests"] if m["platform"]["os"] != "unknown"]
        assert sorted(f"linux/{m['platform']['architecture']}" for m in images) == sorted(row["platforms"].split(","))
        assert {platforms[m["digest"]] for m in images} == set(row["platforms"].split(","))
        assert all(fake_digest({"target": row["target"], "variant": row["variant"], "platform": platforms[m["digest"]]}) == m["digest"][7:] for m in images)
        assert index["annotations"]["org.opencontainers.image.description"] == row["description"]
        assert index["annotations"]["org.opencontainers.image.licenses"] == "MIT"
    assert set(tags_written) == set(expected)
    assert all(t.startswith("ghcr.io/r1kit/") for t in tags_written), "the owner, lowercased"
    init = catalog.load().get("model-init").version
    if release:
        assert not any(t.endswith((":latest", ":cu12", ":cu13")) for t in tags_written), "a release moves no moving tag"
        assert all("-r1kit0.1.0" in t for t in tags_written), "a release writes its own tag only, for every image alike"
        assert f"ghcr.io/r1kit/model-init:{init}-r1kit0.1.0" in tags_written
    else:
        assert f"ghcr.io/r1kit/model-init:{init}" in tags_written, "the stacks' model-init tag, from main"
        assert ("ghcr.io/r1kit/model-init:sha-0123456789ab" in tags_written) == (event == "push")


def test_a_release_or_commit_tag_is_never_overwritten(tmp_path: Path, fake_path: str):
    """Defect 5: "immutable" tags stay so even when a release run (or a push run) is re-run."""
    run = plan(tmp_path, "push", "refs/tags/v0.1.0")
    store, platforms = build_artifacts(tmp_path, run["build"])
    row = next(r for r in run["merge"] if r["target"] == "model-init")
    assert row["immutable_tags"] == "ghcr.io/r1kit/model-init:0.1.0-r1kit0.1.0"
    assert merge(tmp_path, row, store, platforms, fake_path).returncode == 0
    again = merge(tmp_path / "rerun", row, store, platforms, fake_path, registry=tmp_path / "registry.json")
    assert again.returncode != 0 and "exists already" in again.stdout
    main = plan(tmp_path / "main", "push", "refs/heads/main")["merge"]
    assert next(r for r in main if r["target"] == "model-init")["immutable_tags"] == "ghcr.io/r1kit/model-init:sha-0123456789ab"


def test_every_merge_pattern_collects_exactly_its_variants_platforms(tmp_path: Path):
    """Defect 2: `digest-llamacpp-cuda-cu12-*` also matched `digest-llamacpp-cuda-cu12-blis-amd64`."""
    # `builder matrix` as the plan step calls it (without the gate's values: the same names either way).
    run = {job: json.loads(builder("matrix", "--job", job, "--registry", "ghcr.io/r1kit").stdout) for job in ("build", "merge")}
    names = [r["artifact"] for r in run["build"]]
    assert len(set(names)) == len(names)
    for row in run["merge"]:
        pattern = expand(uses(workflow()["jobs"]["merge"], "actions/download-artifact")["with"]["pattern"], row | {"__temp": ""})
        matched = [r for r in run["build"] if minimatch(r["artifact"], pattern)]
        assert {(r["target"], r["variant"]) for r in matched} == {(row["target"], row["variant"])}, pattern
        assert sorted(r["platform"] for r in matched) == sorted(row["platforms"].split(","))


def test_the_publishing_page_says_how_bump_pull_requests_get_their_checks():
    """Defect 3: a pull request opened with GITHUB_TOKEN starts no workflow runs."""
    section = PUBLISHING[PUBLISHING.index("## Prebuilt images"):PUBLISHING.index("## Publish from your fork")]
    assert "actions/create-github-app-token" in section and "GITHUB_TOKEN" in section


def test_the_minimatch_stand_in_expands_braces_and_keeps_literals():
    assert minimatch("digest-a-cu12-amd64", "digest-a-cu12-{amd64,arm64}")
    assert not minimatch("digest-a-cu12-blis-amd64", "digest-a-cu12-{amd64,arm64}")
    assert minimatch("digest-a-cu12-blis-amd64", "digest-a-cu12-*"), "the old pattern's crossing, reproduced"


def test_a_crossed_or_missing_digest_fails_only_that_variants_merge(tmp_path: Path, fake_path: str):
    """Defects 1 and 2: a failed build leaves its variant one digest short; the merge of that variant fails on the
    count, and every other variant still publishes (merge runs `if: !cancelled()`)."""
    run = plan(tmp_path, "push", "refs/heads/main")
    store, platforms = build_artifacts(tmp_path, run["build"], failed={("llamacpp-cuda", "cu13", "arm64")})
    results = {(r["target"], r["variant"]): merge(tmp_path, r, store, platforms, fake_path) for r in run["merge"]}
    failed = {k for k, r in results.items() if r.returncode != 0}
    assert failed == {("llamacpp-cuda", "cu13")}
    assert "ghcr.io/r1kit/llamacpp-cuda: 1 digests for 2 platforms" in results[("llamacpp-cuda", "cu13")].stderr
    assert "ghcr.io/r1kit/llamacpp-cuda:cu12" in published(tmp_path)
    assert "ghcr.io/r1kit/llamacpp-cuda:cu13" not in published(tmp_path)
    # A digest of another variant in the folder: two for one platform.
    folder = tmp_path / "crossed"
    folder.mkdir()
    (folder / ("1" * 64)).write_text("linux/amd64\n")
    (folder / ("2" * 64)).write_text("linux/amd64\n")
    (folder / ("3" * 64)).write_text("linux/arm64\n")
    with pytest.raises(Exception, match="two digests for linux/amd64"):
        ci.digest_refs(folder, "x/y", ("linux/amd64", "linux/arm64"))


def test_merge_runs_for_each_variant_whose_builds_succeeded():
    jobs = workflow()["jobs"]
    for name in ("merge", "verify", "scan"):
        assert jobs[name]["if"].replace(" ", "") == "${{!cancelled()&&needs.plan.outputs.publish=='true'}}", name
    assert jobs["merge"]["strategy"]["fail-fast"] is False


def test_no_job_orders_or_couples_images():
    """Defect 1: model-init builds llama-gguf-split itself; no build waits for another image of ours."""
    jobs = workflow()["jobs"]
    assert jobs["build"]["needs"] == "plan"
    text = IMAGES.read_text()
    cat = catalog.load()
    for name in cat.targets:
        assert name not in text, f"the workflow names {name}: the matrix comes from the catalog"
    for target in cat.targets.values():
        rendered = builder("render", target.name).stdout
        froms = [l.split()[1] for l in rendered.splitlines() if l.startswith("FROM ")]
        assert not any("r1kit" in f or f.split(":")[0] in cat.targets for f in froms), (target.name, froms)


def test_the_registry_owner_comes_from_the_repository(tmp_path: Path):
    spec = step(workflow()["jobs"]["plan"], "matrix")
    assert spec["env"]["REGISTRY"] == "ghcr.io/${{ github.repository_owner }}"
    run = plan(tmp_path, "push", "refs/heads/main", owner="SomeFork")
    assert {r["image"].rsplit("/", 1)[0] for r in run["build"] + run["merge"]} == {"ghcr.io/somefork"}


# --- what the stacks pull, after a first push to main -------------------------------------------------------------

CHECK = "Pull every stack default without a login"


def stack_defaults() -> list[stack_images.StackImage]:
    """The images of ours the stacks pull by default, in the registry the plan step writes to (owner R1kit)."""
    return stack_images.stack_images(REPO, "ghcr.io/R1kit")


def empty_registry(tmp_path: Path, platforms: dict) -> Path:
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"tags": {}, "blobs": {}, "calls": [], "platforms": platforms}))
    return registry


def check_stacks(tmp_path: Path, path: str, registry: Path, owner_type: str = "Organization") -> subprocess.CompletedProcess:
    """The stacks job's step script, as the runner runs it: no login, `docker` and `gh` the stand-ins."""
    spec = step(workflow()["jobs"]["stacks"], CHECK)
    assert spec["env"] == {"REGISTRY": "ghcr.io/${{ github.repository_owner }}", "OWNER": "${{ github.repository_owner }}",
                           "GH_TOKEN": "${{ github.token }}"}
    temp = tmp_path / "stacks-job"
    temp.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_CONFIG"}
    env |= {"PATH": path, "RUNNER_TEMP": str(temp), "FAKE_REGISTRY": str(registry), "FAKE_OWNER_TYPE": owner_type,
            "REGISTRY": "ghcr.io/R1kit", "OWNER": "R1kit", "GH_TOKEN": "unused"}
    return run_script(spec["run"], env)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == len(result.stderr.strip().splitlines()), result.stderr
    return lines


def compose_default(value: str) -> str:
    """`${VAR:-default}` with VAR unset, innermost first, as compose resolves it."""
    while match := re.search(r"\$\{\w+:-([^${}]*)\}", value):
        value = value[: match.start()] + match.group(1) + value[match.end():]
    return value


def test_the_stack_defaults_are_every_image_of_ours_a_stack_pulls():
    """Read apart from builder's pattern: every `image:` of every stack file (overrides and stacks/shared/ too) with
    its compose defaults, and every *_IMAGE line of stacks/.env.example; upstream images are not ours."""
    named = set()
    for path in (REPO / "stacks").rglob("*.yml"):
        named |= {compose_default(i) for i in re.findall(r"^\s*image: (\S+)$", path.read_text(), re.M)}
    env = (REPO / "stacks" / ".env.example").read_text()
    named |= {v.replace("${R1KIT_REGISTRY}", "ghcr.io/r1kit") for v in re.findall(r"^# \w+_IMAGE=(\S+)$", env, re.M)}
    ours = {i for i in named if i.startswith("ghcr.io/r1kit/")}
    listed = {i.ref for i in stack_images.stack_images(REPO)}
    assert ours == listed
    assert {i.split(":")[0] for i in named - ours} >= {"ollama/ollama", "ghcr.io/open-webui/open-webui"}, "upstream ones exist and are left out"
    assert {i.target for i in stack_images.stack_images(REPO)} <= set(catalog.load().targets), "only catalog images"
    init = next(i for i in stack_images.stack_images(REPO) if i.target == "model-init")
    assert "stacks/shared/services.yml" in init.files and "stacks/.env.example" in init.files


def test_a_first_push_to_main_publishes_every_image_the_stacks_name(tmp_path: Path, fake_path: str):
    """Issue 27: `docker compose -f stacks/ollama-webui.yml up` found no model-init:<version> after the first publish.
    From an empty registry, one push to main writes every stack default, and the stacks job's check passes; then,
    with a package private, it fails saying where to make it public."""
    run = plan(tmp_path, "push", "refs/heads/main")
    store, platforms = build_artifacts(tmp_path, run["build"])
    registry = empty_registry(tmp_path, platforms)
    for row in run["merge"]:
        result = merge(tmp_path, row, store, platforms, fake_path, registry)
        assert result.returncode == 0, result.stderr
    written = published(tmp_path)
    assert [i.ref for i in stack_defaults() if i.ref not in written] == []
    check = check_stacks(tmp_path, fake_path, registry)
    assert check.returncode == 0, check.stderr
    assert f"all {len(stack_defaults())} stack default images pull anonymously" in check.stderr
    asked = [c[2] for c in json.loads(registry.read_text())["calls"] if c[:2] == ["manifest", "inspect"]]
    assert sorted(asked) == sorted(i.ref for i in stack_defaults())
    # GHCR makes a package private when it is first pushed: the check says where to make it public.
    image = next(i for i in stack_defaults() if i.target == "model-init")
    registry.write_text(json.dumps(json.loads(registry.read_text()) | {"private": [image.ref.rsplit(":", 1)[0]]}))
    for owner_type, kind in (("Organization", "orgs"), ("User", "users")):
        check = check_stacks(tmp_path / owner_type, fake_path, registry, owner_type)
        assert check.returncode == 1
        assert error_lines(check) == [
            f"error: {image.ref} (named by {', '.join(image.files)}): the registry refuses an anonymous pull (a new GHCR "
            f"package is private): make the package public at https://github.com/{kind}/r1kit/packages/container/model-init/settings"
        ]


def test_one_failed_build_blocks_only_its_variant_and_the_check_names_what_the_stacks_miss(tmp_path: Path, fake_path: str):
    run = plan(tmp_path, "push", "refs/heads/main")
    defaults = {i.ref: i for i in stack_defaults()}
    named = [r for r in run["merge"] if set(r["tags"].splitlines()) & set(defaults)]
    unnamed = [r for r in run["merge"] if not set(r["tags"].splitlines()) & set(defaults)]
    assert named and unnamed
    # One platform of the stack default with the most platforms, and a variant no stack names.
    stack_row = max(named, key=lambda r: len(r["platforms"].split(",")))
    other_row = unnamed[0]
    failed = {(stack_row["target"], stack_row["variant"], stack_row["platforms"].split(",")[-1].split("/")[1]),
              (other_row["target"], other_row["variant"], other_row["platforms"].split(",")[0].split("/")[1])}
    store, platforms = build_artifacts(tmp_path, run["build"], failed=failed)
    registry = empty_registry(tmp_path, platforms)
    results = {(r["target"], r["variant"]): merge(tmp_path, r, store, platforms, fake_path, registry) for r in run["merge"]}
    assert {k for k, r in results.items() if r.returncode != 0} == {(t, v) for t, v, _ in failed}
    for row in (stack_row, other_row):
        assert f"{row['image']}: " in results[(row["target"], row["variant"])].stderr, "the failed merge names its image"
    written = published(tmp_path)
    for row in run["merge"]:
        if row not in (stack_row, other_row):
            assert set(row["tags"].splitlines()) <= set(written), (row["target"], row["variant"])
    # The stacks now name an image that was not pushed: the check says which, and which stack files name it.
    check = check_stacks(tmp_path, fake_path, registry)
    assert check.returncode == 1
    missing = [defaults[t] for t in stack_row["tags"].splitlines() if t in defaults]
    lines = error_lines(check)
    assert len(lines) == len(missing)
    for image, line in zip(missing, lines):
        assert line.startswith(f"error: {image.ref} (named by {', '.join(image.files)}): not in the registry"), line
    assert not any(t in check.stderr for t in other_row["tags"].splitlines()), "a variant no stack names is no stack's problem"


@pytest.mark.parametrize(
    ("status", "output", "pull"),
    [
        (0, "", stack_images.Pull.PULLS),
        (1, "no such manifest: ghcr.io/o/model-init:0.1.0", stack_images.Pull.ABSENT),
        (1, "ERROR: ghcr.io/o/model-init:0.1.0: not found", stack_images.Pull.ABSENT),
        (1, "errors: denied: requested access to the resource is denied", stack_images.Pull.REFUSED),
        (1, "failed to fetch anonymous token: unexpected status: 401 Unauthorized", stack_images.Pull.REFUSED),
        (1, "unexpected status from HEAD request: 403 Forbidden", stack_images.Pull.REFUSED),
        (1, "dial tcp: lookup ghcr.io: i/o timeout", stack_images.Pull.UNANSWERED),
    ],
)
def test_the_registry_answers_are_told_apart(status: int, output: str, pull):
    assert stack_images.Answer("r", status, output).pull is pull


def test_the_check_refuses_a_malformed_answers_file_and_names_an_image_not_asked(tmp_path: Path):
    answers = tmp_path / "answers"
    answers.write_text("ghcr.io/r1kit/model-init:0.1.0 0\n")
    result = builder("check-pulls", str(answers))
    assert result.returncode == 2 and result.stderr.startswith(f"error: {answers}:1: expected REF<TAB>STATUS<TAB>OUTPUT")
    answers.write_text("")
    result = builder("check-pulls", str(answers))
    assert result.returncode == 1 and len(error_lines(result)) == len(stack_images.stack_images(REPO))
    assert all(line.endswith("not asked (the answers file has no line for it)") for line in error_lines(result))


def test_the_stacks_job_runs_on_main_after_the_merges_and_never_logs_in():
    job = workflow()["jobs"]["stacks"]
    assert job["needs"] == ["plan", "merge"]
    assert job["if"].replace(" ", "") == "${{!cancelled()&&needs.plan.outputs.publish=='true'&&github.ref=='refs/heads/main'}}"
    assert job["permissions"] == {"contents": "read"}, "no packages permission: the registry sees an anonymous user"
    assert not any("login" in s.get("uses", "") for s in job["steps"])
    script = step(job, CHECK)["run"]
    assert 'export DOCKER_CONFIG="$RUNNER_TEMP/anonymous"' in script and "docker manifest inspect" in script
    assert 'builder check-pulls "$RUNNER_TEMP/answers"' in script and "${{" not in script


# --- the publish gate ---------------------------------------------------------------------------------------------

GATE = [
    ("push", "refs/heads/main", True, "", SHA),
    ("schedule", "refs/heads/main", True, "", ""),
    ("workflow_dispatch", "refs/heads/main", True, "", ""),
    ("push", "refs/tags/v0.1.0", True, "v0.1.0", ""),
    ("workflow_dispatch", "refs/tags/v1.2.3-rc.1", True, "v1.2.3-rc.1", ""),
    ("workflow_dispatch", "refs/heads/feature", False, "", ""),
    ("push", "refs/heads/main-old", False, "", ""),
    ("pull_request", "refs/pull/7/merge", False, "", ""),
    ("pull_request", "refs/heads/main", False, "", ""),
    ("push", "refs/tags/v1.2", False, "", ""),
    ("push", "refs/tags/nightly", False, "", ""),
    ("workflow_dispatch", "refs/tags/v1.2.3.4", False, "", ""),
]


@pytest.mark.parametrize(("event", "ref", "publish", "release", "sha"), GATE)
def test_only_main_and_release_tags_publish(event, ref, publish, release, sha):
    """Defect 4: a manual run of any branch published `latest` and `cu12`."""
    result = builder("publish-gate", "--event", event, "--ref", ref, "--sha", SHA)
    assert result.returncode == 0, result.stderr
    out = dict(l.split("=", 1) for l in result.stdout.splitlines())
    assert (out["publish"], out["release"], out["sha"]) == (str(publish).lower(), release, sha)


def test_a_run_of_an_older_main_commit_publishes_nothing():
    stale = builder("publish-gate", "--event", "push", "--ref", "refs/heads/main", "--sha", SHA, "--main-head", "f" * 40)
    assert "publish=false" in stale.stdout.splitlines()
    fresh = builder("publish-gate", "--event", "push", "--ref", "refs/heads/main", "--sha", SHA, "--main-head", SHA)
    assert "publish=true" in fresh.stdout.splitlines()
    merge = workflow()["jobs"]["merge"]
    guard = step(merge, "Still main's newest commit")
    assert '--main-head "$head"' in guard["run"] and merge["steps"].index(guard) < merge["steps"].index(step(merge, "index"))


def test_nothing_logs_in_or_pushes_unless_the_gate_says_publish():
    jobs = workflow()["jobs"]
    build = jobs["build"]
    for name in ("Log in to GHCR", "Export the digest", "Upload the digest"):
        assert step(build, name)["if"] == "needs.plan.outputs.publish == 'true'"
    push = uses(build, "docker/build-push-action")["with"]
    assert push["outputs"].endswith("push=${{ needs.plan.outputs.publish == 'true' }}")
    assert "github.event_name != 'pull_request'" not in IMAGES.read_text().replace("cancel-in-progress: ${{ github.event_name == 'pull_request' }}", "")


def identities() -> list[re.Pattern]:
    found = re.findall(r"--certificate-identity-regexp '([^']+)'", PUBLISHING)
    assert len(found) >= 2
    return [re.compile(r) for r in found]


@pytest.mark.parametrize(("event", "ref", "publish", "release", "sha"), GATE)
def test_the_published_cosign_identity_accepts_exactly_the_refs_that_publish(event, ref, publish, release, sha):
    """Defect 4: what is signed is images.yml@<ref>; the publishing page's every regex must accept it iff the gate publishes."""
    if event == "pull_request":
        return  # pull requests are not signed at all
    identity = f"https://github.com/r1kit/r1kit/.github/workflows/images.yml@{ref}"
    for regex in identities():
        assert bool(regex.match(identity)) == publish, (regex.pattern, identity)


def test_every_index_and_platform_is_signed_and_attested():
    merge = workflow()["jobs"]["merge"]
    assert step(merge, "Sign the index and every platform's manifest (keyless)")["run"] == 'cosign sign --yes --recursive "$IMAGE@$DIGEST"'
    attest = uses(merge, "actions/attest-build-provenance")["with"]
    assert attest == {"subject-name": "${{ matrix.image }}", "subject-digest": "${{ steps.index.outputs.digest }}", "push-to-registry": True}
    assert merge["permissions"] == {"contents": "read", "packages": "write", "id-token": "write", "attestations": "write"}


def test_the_scanner_runs_apart_with_a_read_only_token_on_every_platform():
    jobs = workflow()["jobs"]
    scan = jobs["scan"]
    assert scan["permissions"] == {"contents": "read", "packages": "read", "security-events": "write"}
    assert scan["strategy"]["matrix"]["include"] == "${{ fromJSON(needs.plan.outputs.build) }}"  # one row per platform
    assert uses(scan, "aquasecurity/trivy-action")["with"]["image-ref"] == "${{ steps.ref.outputs.ref }}"
    assert "matrix.arch" in uses(scan, "github/codeql-action/upload-sarif")["with"]["category"]
    for name, job in jobs.items():
        if name != "scan":
            assert not any("trivy" in s.get("uses", "") for s in job["steps"]), name


def test_each_platform_is_smoke_tested_by_digest_on_its_native_runner(tmp_path: Path):
    verify = workflow()["jobs"]["verify"]
    assert verify["runs-on"] == "${{ matrix.runner }}" and verify["needs"] == ["plan", "merge"]
    run = step(verify, "Smoke test by digest")["run"]
    assert '"$IMAGE@$digest"' in run and "--platform" in run
    rows = plan(tmp_path, "push", "refs/heads/main")["build"]
    assert {r["target"]: (r["smoke_entrypoint"], r["smoke_args"]) for r in rows} == {
        t.name: (t.smoke_test[0], " ".join(t.smoke_test[1:])) for t in catalog.load().targets.values() if t.published
    }


def test_check_index_refuses_a_missing_platform_and_missing_annotations(tmp_path: Path):
    index = tmp_path / "index.json"
    index.write_text(json.dumps({"manifests": [{"digest": "sha256:" + "1" * 64, "platform": {"os": "linux", "architecture": "amd64"}}]}))
    result = builder("check-index", str(index), "--platforms", "linux/amd64,linux/arm64", "--annotation", "index:org.opencontainers.image.licenses=MIT")
    assert result.returncode == 2 and "platforms linux/amd64, expected linux/amd64, linux/arm64" in result.stderr and "licenses" in result.stderr


def test_build_jobs_are_sized_and_free_disk_on_both_architectures(tmp_path: Path):
    build = workflow()["jobs"]["build"]
    assert "JOBS=${{ matrix.jobs }}" in uses(build, "docker/build-push-action")["with"]["build-args"]
    free = step(build, "Free disk space")["run"]
    assert "rm -rf" in free and free.count("df -h") == 2 and "apt" not in free  # no x86-only package names
    for row in plan(tmp_path, "push", "refs/heads/main")["build"]:
        assert row["jobs"] == ci.JOBS[row["runner"]]
    assert "ARG JOBS" in (REPO / "images" / "llamacpp" / "Dockerfile.j2").read_text()
    for name, job in workflow()["jobs"].items():
        assert job["timeout-minutes"] <= 300, name


def test_runs_of_one_ref_queue_and_main_runs_are_never_cancelled():
    concurrency = workflow()["concurrency"]
    assert concurrency["group"] == "images-${{ github.ref }}"
    assert concurrency["cancel-in-progress"] == "${{ github.event_name == 'pull_request' }}"


# --- the publishing page against what a run publishes ------------------------------------------------------------


def page_table(begin: str) -> list[list[str]]:
    start = PUBLISHING.index(begin)
    rows = []
    for line in PUBLISHING[start:].splitlines()[1:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return [r for r in rows[2:]]


def test_the_tag_table_is_what_a_main_run_publishes(tmp_path: Path):
    run = plan(tmp_path, "schedule", "refs/heads/main")
    rows = page_table("<!-- builder sync: published tags")
    image = None
    documented = []
    for cells in rows:
        image = cells[0].strip("`") or image
        documented.append((image, [t.strip("` ") for t in cells[1].split(",")], cells[3]))
    expected = [
        (r["image"].replace("ghcr.io/r1kit", "ghcr.io/r1kit"), [t.split(":", 1)[1] for t in r["tags"].splitlines()],
         ", ".join(p.split("/")[1] for p in r["platforms"].split(",")))
        for r in run["merge"]
    ]
    assert documented == expected


def test_the_release_and_commit_table_is_what_those_runs_publish(tmp_path: Path):
    rows = page_table("<!-- published per commit and per release")
    main = plan(tmp_path / "a", "push", "refs/heads/main")["merge"]
    release = plan(tmp_path / "b", "push", "refs/tags/v0.1.0")["merge"]
    cat = catalog.load()
    image = None
    documented, expected = [], []
    for cells in rows:
        image = cells[0].strip("`") or image
        documented.append((image, cells[1].strip("`"), cells[2].strip("`"), cells[3].strip("`")))
    for m, r in zip(main, release):
        version = cat.get(m["target"]).version
        new = [t.split(":", 1)[1] for t in m["tags"].splitlines()]
        commit_tag = next(t for t in new if t.startswith("sha-")).replace("0123456789ab", "<commit>")
        release_tags = [t.split(":", 1)[1] for t in r["tags"].splitlines()]
        assert len(release_tags) == 1
        release_tag = release_tags[0].replace("-r1kit0.1.0", "-r1kitX.Y.Z").replace(version, "<version>", 1)
        expected.append((f"ghcr.io/r1kit/{m['target']}", m["variant"], commit_tag, release_tag))
    assert documented == expected
