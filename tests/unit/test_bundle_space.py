"""`builder bundle load`'s free-space preflight against a real Docker engine and a real small filesystem (a tmpfs as
the data root, given by --data-root as doctor's disk test gives it), with a small real bundle made by the bundle's
own writer. What is here already (an image under its refs, stored layers) needs no space again; the model volume's
part of that is run in tests/e2e/test_bundle.py (a rerun of a finished load passes on a 2 MiB data root)."""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

import pytest
from python_on_whales import DockerClient
from support.builder import builder_in_process

from builder.bundle import load
from builder.bundle.archive import BundleWriter
from builder.bundle.manifest import SETTINGS, ImageEntry, Manifest, ModelEntry
from builder.core.errors import UserError

pytestmark = pytest.mark.docker

MIB = 1024 * 1024
IMAGE_BYTES = os.urandom(300 * 1024)
MODEL_BYTES = os.urandom(3 * MIB)
STACK_FILE = b"services: {}\n"


def write_bundle(out: Path, image_id: str, refs: tuple[str, ...]) -> Manifest:
    """A bundle as `bundle save` lays it out: one image, one model file, a stack file, the settings."""
    with BundleWriter(out) as w:
        w.add("images/01.tar", len(IMAGE_BYTES), io.BytesIO(IMAGE_BYTES), lambda n: None)
        w.add("model/m/model.gguf", len(MODEL_BYTES), io.BytesIO(MODEL_BYTES), lambda n: None)
        w.add("stacks/llamacpp-webui.yml", len(STACK_FILE), io.BytesIO(STACK_FILE), lambda n: None)
        w.add(SETTINGS, 11, io.BytesIO(b"MODEL=tiny\n"), lambda n: None)
        manifest = Manifest("llamacpp", ("llamacpp-webui.yml",), ModelEntry("tiny", "models", ("m/model.gguf",), ()),
                            (ImageEntry("images/01.tar", image_id, refs, ()),), tuple(w.entries))
        w.finish(manifest)
    return manifest


def absent_ref() -> str:
    return f"r1kit-test/bundle-space-{uuid.uuid4().hex[:8]}:absent"


@pytest.mark.parametrize("small_volume", ["2m"], indirect=True)
def test_a_load_against_a_data_root_too_small_refuses_before_anything_is_loaded(small_volume: Path, tmp_path: Path, docker: DockerClient):
    ref = absent_ref()
    write_bundle(tmp_path / "b", f"sha256:{uuid.uuid4().hex * 2}", (ref,))
    # A changed byte too: the space is checked first, so this refusal comes before a long verify would find it.
    model = tmp_path / "b" / "model" / "m" / "model.gguf"
    model.write_bytes(b"x" + MODEL_BYTES[1:])
    stacks = tmp_path / "offline" / "stacks"
    result = builder_in_process("bundle", "load", str(tmp_path / "b"), "--stacks", str(stacks), "--data-root", str(small_volume),
                                check=False, capture_output=True)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2, result.stderr
    assert last.startswith(f"error: not enough space in {small_volume} (--data-root): the load needs about 3.6 MiB "
                           "(images 300.0 KiB, one image unpacked by docker load 300.0 KiB, model 3.0 MiB) + 16.0 MiB margin, 2.0 MiB is free; "
                           "free 17.6 MiB there"), last
    assert last.endswith("then load again; nothing was loaded"), last
    assert not stacks.exists() and not docker.image.exists(ref) and list(small_volume.iterdir()) == []


def test_what_is_here_already_needs_no_space_again(tmp_path: Path, docker: DockerClient, base_image: str):
    """An image under all its refs: nothing. Its ID here under another ref: its layers are stored, but docker load
    still unpacks the whole stream under the data root. An image not here: both. The model, with no stack files in
    --stacks yet (no earlier load wrote them), counts whole."""
    here = docker.image.inspect(base_image).id
    stacks = tmp_path / "stacks"
    cases = [(here, (base_image,), 0, 0), (here, (base_image, absent_ref()), 0, len(IMAGE_BYTES)),
             (f"sha256:{uuid.uuid4().hex * 2}", (absent_ref(),), len(IMAGE_BYTES), len(IMAGE_BYTES))]
    for n, (image_id, refs, stored, unpacked) in enumerate(cases):
        manifest = write_bundle(tmp_path / f"b{n}", image_id, refs)
        need = load.space_needed(docker, manifest, ["stacks/llamacpp-webui.yml"], stacks, {"MODEL": "tiny"})
        assert need == load.SpaceNeeded(images=stored, unpack=unpacked, model=len(MODEL_BYTES)), (refs, need)


@pytest.mark.parametrize("small_volume", ["2m"], indirect=True)
def test_the_check_reads_the_free_space_now_and_names_a_root_it_cannot_see(small_volume: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    load.check_space(small_volume, True, load.SpaceNeeded(0, 0, 0))  # nothing to write: no margin either
    assert f"load: space: nothing new to write in {small_volume} (--data-root), 2.0 MiB free" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"needs about 1.0 MiB \(model 1.0 MiB\) \+ 16.0 MiB margin, 2.0 MiB is free"):
        load.check_space(small_volume, True, load.SpaceNeeded(0, 0, MIB))
    with pytest.raises(UserError, match=r"cannot see the free space of .*none \(Docker's data root\) .*give --data-root"):
        load.check_space(tmp_path / "none", False, load.SpaceNeeded(0, 0, 0))
