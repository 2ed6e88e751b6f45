"""What the suite needs before it can build anything, made locally where no registry or GitHub is reachable."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from python_on_whales import DockerClient
from python_on_whales.exceptions import DockerException

from builder.images.catalog import load

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache"
TRIM = ("models", "docs", "media", "tests", ".git", ".github")


# The suite's Debian base image, under a name of its own: where no registry answers it is made with debootstrap,
# and under upstream's name it would stand in for debian:bookworm-slim in every later build on that daemon.
# Builds get it as their base-image build argument.
BASE_IMAGE = "r1kit-test/debian:bookworm-slim"
UPSTREAM_BASE_IMAGE = "debian:bookworm-slim"


def ensure_base_image(docker: DockerClient, ref: str = BASE_IMAGE) -> str:
    """`ref` in the local image store: upstream's image re-tagged where a registry answers, else made with
    debootstrap."""
    if docker.image.exists(ref):
        return ref
    try:
        docker.image.pull(UPSTREAM_BASE_IMAGE, quiet=True)
        docker.image.tag(UPSTREAM_BASE_IMAGE, ref)
        return ref
    except DockerException:
        pass
    suite = ref.split(":")[1].split("-")[0]
    with tempfile.TemporaryDirectory() as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(["debootstrap", "--variant=minbase", suite, str(rootfs), "http://deb.debian.org/debian"], check=True, stdout=subprocess.DEVNULL)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run([*docker.client_config.docker_cmd, "import", "-", ref], stdin=tar.stdout, check=True, stdout=subprocess.DEVNULL)
        tar.wait()
    return ref


def llamacpp_source() -> Path:
    """llama.cpp's pinned tree (images/llamacpp/image.yaml), trimmed to about 11 MB and cached under .cache/: made
    from the archive the images fetch, checked against the same sha256, for the builds that take a local tree."""
    pin = load(REPO / "images").pins["llamacpp"]
    out = CACHE / f"llama.cpp-{pin.version}.tar.gz"
    if out.exists():
        return out
    CACHE.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "source.tar.gz"
        digest = hashlib.sha256()
        with urllib.request.urlopen(pin.source_url, timeout=120) as response, archive.open("wb") as f:
            while chunk := response.read(1 << 20):
                f.write(chunk)
                digest.update(chunk)
        if digest.hexdigest() != pin.sha256:
            raise RuntimeError(f"{pin.source_url} hashes to {digest.hexdigest()}, not the pinned {pin.sha256}")
        prefix = pin.source_tree + "/"
        with tarfile.open(archive) as t:
            t.extractall(tmp, members=[m for m in t.getmembers() if m.name.startswith(prefix)], filter="data")
        tree = Path(tmp) / pin.source_tree
        for name in TRIM:
            shutil.rmtree(tree / name, ignore_errors=True)
        partial = out.with_suffix(".partial")
        with tarfile.open(partial, "w:gz") as t:
            t.add(tree, arcname="llama.cpp")
        partial.rename(out)
    return out


# linux/arm64 builds under QEMU (ENVIRONMENT.md): binfmt_misc with qemu-aarch64-static, and a Debian arm64 base image
# that says it is arm64 (`docker import` labels every image amd64, and BuildKit would then try to pull instead).
ARM64_BASE_IMAGE = "r1kit-test/debian-arm64:bookworm-slim"
QEMU_AARCH64 = Path("/usr/bin/qemu-aarch64-static")
BINFMT = Path("/proc/sys/fs/binfmt_misc")


def ensure_arm64_emulation() -> None:
    """Register qemu-aarch64-static with binfmt_misc (F: the interpreter is opened now, so containers use it too)."""
    if (BINFMT / "qemu-aarch64").exists():
        return
    if not QEMU_AARCH64.exists():
        subprocess.run(["apt-get", "install", "-y", "-q", "qemu-user-static"], check=True, stdout=subprocess.DEVNULL)
    if not (BINFMT / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=True)
    if not (BINFMT / "qemu-aarch64").exists():
        magic = r"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
        mask = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
        (BINFMT / "register").write_text(f":qemu-aarch64:M::{magic}:{mask}:{QEMU_AARCH64}:OCF")


def ensure_arm64_base_image(docker: DockerClient, ref: str = ARM64_BASE_IMAGE) -> str:
    """A Debian bookworm arm64 image (debootstrap under emulation, about 2 minutes), labelled arm64."""
    if docker.image.exists(ref):
        return ref
    ensure_arm64_emulation()
    with tempfile.TemporaryDirectory() as tmp:
        rootfs, saved, edited = Path(tmp) / "rootfs", Path(tmp) / "saved", Path(tmp) / "edited"
        subprocess.run(["debootstrap", "--arch=arm64", "--variant=minbase", "bookworm", str(rootfs), "http://deb.debian.org/debian"],
                       check=True, stdout=subprocess.DEVNULL)
        staging = f"{ref}-amd64-label"
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run([*docker.client_config.docker_cmd, "import", "-", staging], stdin=tar.stdout, check=True, stdout=subprocess.DEVNULL)
        tar.wait()
        # Relabel: the config JSON says arm64, renamed to the sha256 of its new bytes, and the manifest points at it.
        saved.mkdir()
        subprocess.run([*docker.client_config.docker_cmd, "save", "-o", str(saved / "image.tar"), staging], check=True)
        with tarfile.open(saved / "image.tar") as t:
            t.extractall(edited, filter="data")
        manifest = json.loads((edited / "manifest.json").read_text())
        old = edited / manifest[0]["Config"]
        config = json.loads(old.read_text())
        config.update(architecture="arm64", variant="v8")
        data = json.dumps(config).encode()
        name = hashlib.sha256(data).hexdigest() + ".json"
        old.unlink()
        (edited / name).write_bytes(data)
        manifest[0].update(Config=name, RepoTags=[ref])
        (edited / "manifest.json").write_text(json.dumps(manifest))
        (edited / "repositories").unlink(missing_ok=True)
        with tarfile.open(saved / "arm64.tar", "w") as t:
            for item in sorted(edited.iterdir()):
                t.add(item, arcname=item.name)
        subprocess.run([*docker.client_config.docker_cmd, "load", "-i", str(saved / "arm64.tar")], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([*docker.client_config.docker_cmd, "image", "rm", staging], check=True, stdout=subprocess.DEVNULL)
    return ref
