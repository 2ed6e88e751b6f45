"""`builder bundle save` and `load` (issue 32), in the real engine: the llama.cpp CPU stack with the test model is
downloaded from the local Hub, saved, its images, volumes and files removed, loaded from the bundle into an empty
stacks folder, and brought up on a network with no route out, where Open WebUI answers a chat. A bundle with one
byte changed is refused, naming the file, with nothing loaded; a load killed half-way and run again ends identical
to an uninterrupted one.

The suite's images are shared by other tests, so the stack runs them under tags of this module's own, and only
those tags are removed and loaded again: their layers stay in Docker's store (a `docker load` of layers present
still reads the whole image and restores the tags to the recorded IDs).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest
from support.http import post_json, status
from support.hub import DISTILL_FILE
from support.open_webui import model_ids
from support.prerequisites import REPO
from support.stack import Stack

pytestmark = [pytest.mark.docker, pytest.mark.slow]

MODEL = "r1-distill-qwen-1.5b"
ADMIN = {"name": "admin", "email": "admin@example.com", "password": "bundle-password-1"}
STACK_FILES = ["llamacpp-webui.yml", "llamacpp-cpu.yml"]


def bundle(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "builder.cli", "bundle", *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=900)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def image_id(ref: str) -> str | None:
    done = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def volume_exists(name: str) -> bool:
    return subprocess.run(["docker", "volume", "inspect", name], capture_output=True).returncode == 0


def volume_snapshot(image: str, volume: str) -> dict[str, str]:
    """Every file of the volume with its sha256; the download's state file with each file's `stat` (its mtime, which
    differs from one load to the next by nature) taken out."""
    script = ("import hashlib, json, os\nout = {}\nfor d, _, fs in os.walk('/models'):\n for f in fs:\n  p = os.path.join(d, f)\n"
              "  out[os.path.relpath(p, '/models')] = open(p, 'rb').read().decode('latin-1')\nprint(json.dumps(out))")
    raw = json.loads(subprocess.run(["docker", "run", "--rm", "--network", "none", "-v", f"{volume}:/models:ro", "--entrypoint", "python3", image, "-c", script],
                                    capture_output=True, text=True, check=True).stdout)
    snap = {}
    for path, text in raw.items():
        if path == ".r1kit/bundle-load.json":
            continue  # the loader's own record of what it wrote (stats too)
        if path.endswith(".json") and path.startswith(".r1kit/"):
            state = json.loads(text)
            for entry in state.get("files", {}).values():
                entry.pop("stat")
            text = json.dumps(state, sort_keys=True)
        snap[path] = hashlib.sha256(text.encode("latin-1")).hexdigest()
    return snap


def folder_snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(llamacpp_cpu_image: str, model_init_image: str, open_webui_image: str, local_hub, tmp_path_factory: pytest.TempPathFactory):
    """This module's tags of the suite's images, a copy of stacks/ on the "connected host", and what each host's
    builder runs with."""
    from conftest import RUN

    name = f"r1kit-test/bundle-{uuid.uuid4().hex[:8]}"
    refs = {"LLAMACPP_CPU_IMAGE": f"{name}:llamacpp-cpu", "MODEL_INIT_IMAGE": f"{name}:model-init", "OPEN_WEBUI_IMAGE": f"{name}:open-webui"}
    for source, ref in zip((llamacpp_cpu_image, model_init_image, open_webui_image), refs.values()):
        subprocess.run(["docker", "tag", source, ref], check=True)
    work = tmp_path_factory.mktemp("bundle")
    source = work / "connected" / "stacks"
    shutil.copytree(REPO / "stacks", source, ignore=shutil.ignore_patterns(".env"))
    shutil.copy2(REPO / "tests/e2e/hub-on-host.yml", source / "hub-on-host.yml")
    project = f"r1kit-test-{RUN}-bundle"
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "COMPOSE_PROJECT_NAME": project, "NO_COLOR": "1"}
    connected = {**base, **refs, "HF_ENDPOINT": local_hub.url, "LLAMACPP_CTX_SIZE": "512", "LLAMACPP_THREADS": "2"}
    ids = {ref: image_id(ref) for ref in refs.values()}
    try:
        yield {"work": work, "source": source, "project": project, "base": base, "connected": connected, "refs": refs, "ids": ids}
    finally:
        subprocess.run(["docker", "image", "rm", *refs.values()], capture_output=True)
        subprocess.run(["docker", "volume", "rm", f"{project}_models", f"{project}_keys", f"{project}_open-webui"], capture_output=True)


def remove_everything(world: dict) -> None:
    """The images under this module's tags, and the stack's volumes: what the offline host does not have."""
    subprocess.run(["docker", "image", "rm", *world["refs"].values()], capture_output=True)
    for ref in world["refs"].values():
        assert image_id(ref) is None, ref
    subprocess.run(["docker", "volume", "rm", *(f"{world['project']}_{v}" for v in ("models", "keys", "open-webui"))], capture_output=True)
    assert not volume_exists(f"{world['project']}_models")


@pytest.fixture(scope="module")
def saved(world: dict) -> Path:
    """The model downloaded by the stack's own model-init from the local Hub, then the bundle saved."""
    with Stack(world["project"], [world["source"] / f for f in [*STACK_FILES, "hub-on-host.yml"]], world["connected"]) as stack:
        stack("run", "--rm", "--no-deps", "model-init")
        out = world["work"] / "bundle.tar"  # one file: the folder form shares all but the reading and writing, unit-tested
        started = time.monotonic()
        result = bundle("save", "llamacpp-cpu", "--to", str(out), "--stacks", str(world["source"]), env=world["connected"])
        print(f"\nbundle save: {time.monotonic() - started:.0f} s, {out.stat().st_size / 2**30:.2f} GiB", file=sys.stderr)
        assert "saved llamacpp-cpu with r1-distill-qwen-1.5b (3 images" in result.stdout, result.stdout
    remove_everything(world)
    return out


def load_into(world: dict, bundle_path: Path, folder: Path, *extra: str) -> subprocess.CompletedProcess:
    started = time.monotonic()
    result = bundle("load", str(bundle_path), "--stacks", str(folder), *extra, env=world["base"], check=False)
    print(f"\nbundle load: {time.monotonic() - started:.0f} s (exit {result.returncode})", file=sys.stderr)
    return result


def snapshot(world: dict, folder: Path) -> dict:
    return {"images": {ref: image_id(ref) for ref in world["refs"].values()}, "files": folder_snapshot(folder),
            "volume": volume_snapshot(world["refs"]["MODEL_INIT_IMAGE"], f"{world['project']}_models")}


def test_save_refuses_in_one_line_what_is_missing_or_does_not_fit(world: dict, tmp_path: Path, small_volume: Path):
    """Before writing anything: an image not present locally, a model never downloaded, a bundle too large for --to."""
    env = {**world["connected"], "COMPOSE_PROJECT_NAME": f"{world['project']}-never-run"}
    cases = [
        ({"OPEN_WEBUI_IMAGE": "r1kit-test/absent:none"}, tmp_path / "b", "image r1kit-test/absent:none (stack llamacpp-cpu) is not present locally"),
        ({}, tmp_path / "b", f"model {MODEL} is not downloaded: there is no volume {world['project']}-never-run_models"),
    ]
    for extra, out, message in cases:
        result = bundle("save", "llamacpp-cpu", "--to", str(out), "--stacks", str(world["source"]), env={**env, **extra}, check=False)
        assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith(f"error: {message}"), result.stderr[-1000:]
        assert not out.exists()
    with Stack(world["project"], [world["source"] / f for f in [*STACK_FILES, "hub-on-host.yml"]], world["connected"]) as stack:
        stack("run", "--rm", "--no-deps", "model-init")
        result = bundle("save", "llamacpp-cpu", "--to", str(small_volume / "b.tar"), "--stacks", str(world["source"]), env=world["connected"], check=False)
        assert result.returncode == 2 and "error: not enough space in" in result.stderr, result.stderr[-1000:]
        assert list(small_volume.iterdir()) == []


def test_a_saved_bundle_loads_and_serves_a_chat_with_no_route_out(world: dict, saved: Path):
    with tarfile.open(saved) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        settings = tar.extractfile("settings.env").read().decode()  # type: ignore[union-attr]
    assert {f"model/{DISTILL_FILE}", "settings.env", "stacks/llamacpp-webui.yml"} <= {f["path"] for f in manifest["files"]}
    assert f"MODEL={MODEL}\n" in settings and f"LLAMACPP_CPU_IMAGE={world['refs']['LLAMACPP_CPU_IMAGE']}\n" in settings

    offline = world["work"] / "offline" / "stacks"
    result = load_into(world, saved, offline)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {ref: image_id(ref) for ref in world["refs"].values()} == world["ids"], "every image is back under its refs, by its ID"
    files = [offline / f for f in [*STACK_FILES, "offline.yml"]] + [REPO / "tests/e2e/offline-internal.yml"]
    with Stack(world["project"], files, world["base"]) as stack:
        stack("up", "-d", "--no-build", "--pull", "never")
        assert "already downloaded and verified" in stack.logs("model-init")
        assert "HF_HUB_OFFLINE=1" in stack.inspect("llamacpp")["Config"]["Env"], "the load's settings keep the engine off the Hub"
        network = stack.inspect("open-webui")["NetworkSettings"]["Networks"]
        assert [json.loads(subprocess.run(["docker", "network", "inspect", n], capture_output=True, text=True, check=True).stdout)[0]["Internal"]
                for n in network] == [True]
        address = next(iter(network.values()))["IPAddress"]
        url = f"http://{address}:8080"
        deadline = time.monotonic() + 300
        while status(f"{url}/health") != 200:
            assert time.monotonic() < deadline, f"Open WebUI never answered /health\n{stack.logs('open-webui')}"
            time.sleep(2)
        assert stack("exec", "-T", "llamacpp", "curl", "-sS", "-m", "5", "http://1.1.1.1/", check=False).returncode != 0, "the network has no route out"
        token = post_json(f"{url}/api/v1/auths/signup", ADMIN)["token"]
        deadline = time.monotonic() + 120
        while MODEL not in model_ids(url, token):
            assert time.monotonic() < deadline, stack.logs("llamacpp", "open-webui")
            time.sleep(2)
        answer = post_json(f"{url}/api/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 8}, token)
        assert answer["choices"][0]["message"]["content"], answer


def test_a_corrupt_byte_is_refused_naming_the_file_and_nothing_is_loaded(world: dict, saved: Path):
    remove_everything(world)
    with tarfile.open(saved) as tar:
        member = tar.getmember(f"model/{DISTILL_FILE}")
    at = member.offset_data + member.size // 2
    with saved.open("r+b") as f:
        f.seek(at)
        original = f.read(1)
        f.seek(at)
        f.write(bytes([original[0] ^ 0x01]))
    try:
        folder = world["work"] / "corrupt" / "stacks"
        result = load_into(world, saved, folder)
        assert result.returncode == 2
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and f"model/{DISTILL_FILE} is corrupt" in last, result.stderr[-2000:]
        assert all(image_id(ref) is None for ref in world["refs"].values()), "no image was loaded"
        assert not volume_exists(f"{world['project']}_models") and not folder.exists(), "nothing was written"
    finally:
        with saved.open("r+b") as f:
            f.seek(at)
            f.write(original)


def test_a_load_killed_half_way_and_run_again_ends_identical(world: dict, saved: Path, small_volume: Path):
    """Killed while it loads the largest image and run again: identical to an uninterrupted load. Run once more, it
    asks no space for what is there (images under their refs, the model in the volume): a 2 MiB data root does."""
    remove_everything(world)
    whole = world["work"] / "whole" / "stacks"
    assert load_into(world, saved, whole).returncode == 0
    expected = snapshot(world, whole)
    remove_everything(world)

    folder = world["work"] / "killed" / "stacks"
    proc = subprocess.Popen([sys.executable, "-m", "builder.cli", "bundle", "load", str(saved), "--stacks", str(folder)], cwd=REPO,
                            env=world["base"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:  # killed while the last (the largest) image loads
        if line.startswith("load: image 3/3"):
            time.sleep(0.5)  # into its 3 GB stream
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the load finished before it could be killed"
    result = load_into(world, saved, folder)
    assert result.returncode == 0, result.stderr[-3000:]
    got = snapshot(world, folder)
    assert got == expected

    again = load_into(world, saved, folder, "--data-root", str(small_volume))
    assert again.returncode == 0 and f"load: space: nothing new to write in {small_volume} (--data-root)" in again.stderr, again.stderr[-3000:]
    assert snapshot(world, folder) == expected
