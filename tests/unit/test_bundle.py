"""builder/bundle without Docker: the bundle on disk (a folder or one tar file) and its manifest, the verification
before a load, the program that fills the model volume (run here on a plain folder, as the container runs it), and
the stack names. tests/e2e/test_bundle.py runs the whole save and load in the real engine."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from builder.bundle import stack as stacks
from builder.bundle.archive import BundleReader, BundleWriter
from builder.bundle.manifest import SETTINGS, Manifest, ModelEntry
from builder.bundle.volume import FILL_SCRIPT
from builder.core.errors import UserError

REPO = Path(__file__).resolve().parents[2]
MODEL_BYTES = os.urandom(3 * 1024 * 1024 + 17)
STATE = ".r1kit/0123456789abcdef.json"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_bundle(out: Path) -> Manifest:
    with BundleWriter(out) as w:
        w.add_chunks("images/01.tar", iter([b"layer" * 1000, b"config"]), lambda n: None)
        w.add("model/m/model.gguf", len(MODEL_BYTES), io.BytesIO(MODEL_BYTES), lambda n: None)
        state = json.dumps({"complete": True, "files": {"m/model.gguf": {"size": len(MODEL_BYTES), "sha256": sha(MODEL_BYTES), "stat": [1, 2]}}}).encode()
        w.add(f"model/{STATE}", len(state), io.BytesIO(state), lambda n: None)
        w.add(SETTINGS, 12, io.BytesIO(b"MODEL=tiny\n\n"[:12]), lambda n: None)
        manifest = Manifest("llamacpp-cpu", ("llamacpp-webui.yml", "llamacpp-cpu.yml"), ModelEntry("tiny", "models", ("m/model.gguf",), (STATE,)),
                            (), tuple(w.entries))
        w.finish(manifest)
    return manifest


@pytest.mark.parametrize("name", ["bundle", "bundle.tar"])
def test_a_bundle_reads_back_with_every_checksum(tmp_path: Path, name: str):
    manifest = write_bundle(tmp_path / name)
    assert not (tmp_path / f".{name}.partial").exists()
    reader = BundleReader(tmp_path / name)
    assert reader.manifest() == manifest
    seen: list[int] = []
    reader.verify(manifest, seen.append)
    assert sum(seen) == manifest.total
    assert manifest.entry("model/m/model.gguf").sha256 == sha(MODEL_BYTES)
    with reader.open("model/m/model.gguf") as f:
        assert f.read() == MODEL_BYTES
    reader.close()


def test_one_changed_byte_is_refused_naming_the_file(tmp_path: Path):
    manifest = write_bundle(tmp_path / "b")
    model = tmp_path / "b" / "model" / "m" / "model.gguf"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 1
    model.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"model/m/model.gguf is corrupt .*nothing was loaded"):
        BundleReader(tmp_path / "b").verify(manifest, lambda n: None)


def test_a_changed_byte_in_a_tar_bundle_is_refused_too(tmp_path: Path):
    manifest = write_bundle(tmp_path / "b.tar")
    raw = bytearray((tmp_path / "b.tar").read_bytes())
    at = raw.find(MODEL_BYTES[1000:1064]) + 10
    raw[at] ^= 1
    (tmp_path / "b.tar").write_bytes(bytes(raw))
    with pytest.raises(UserError, match="model/m/model.gguf is corrupt"):
        BundleReader(tmp_path / "b.tar").verify(manifest, lambda n: None)


def test_a_missing_or_truncated_file_is_named(tmp_path: Path):
    manifest = write_bundle(tmp_path / "b")
    (tmp_path / "b" / SETTINGS).unlink()
    with pytest.raises(UserError, match="settings.env is missing"):
        BundleReader(tmp_path / "b").verify(manifest, lambda n: None)
    with open(tmp_path / "b" / "model" / "m" / "model.gguf", "r+b") as f:
        f.truncate(100)
    (tmp_path / "b" / SETTINGS).write_bytes(b"MODEL=tiny\n\n")
    with pytest.raises(UserError, match="model/m/model.gguf is 100 bytes"):
        BundleReader(tmp_path / "b").verify(manifest, lambda n: None)


def test_a_stopped_save_leaves_no_bundle_and_the_next_one_cleans_up(tmp_path: Path):
    out = tmp_path / "b.tar"
    with pytest.raises(RuntimeError):
        with BundleWriter(out) as w:
            w.add("model/x", 3, io.BytesIO(b"abc"), lambda n: None)
            raise RuntimeError("stopped")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / ".b.tar.partial").write_bytes(b"a killed save's leftover")
    write_bundle(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.tar"]


@pytest.mark.parametrize("text, message", [
    ("not json", "not a bundle manifest"),
    (json.dumps({"format": "r1kit-bundle/9"}), "of format 'r1kit-bundle/9'"),
])
def test_a_bad_manifest_is_one_line(tmp_path: Path, text: str, message: str):
    write_bundle(tmp_path / "b")
    (tmp_path / "b" / "manifest.json").write_text(text)
    with pytest.raises(UserError, match=message):
        BundleReader(tmp_path / "b").manifest()


def test_not_a_bundle(tmp_path: Path):
    with pytest.raises(UserError, match="no bundle at"):
        BundleReader(tmp_path / "nothing")
    (tmp_path / "x.tar").write_text("hello")
    with pytest.raises(UserError, match="not a bundle"):
        BundleReader(tmp_path / "x.tar")
    (tmp_path / "d").mkdir()
    with pytest.raises(UserError, match="holds no manifest.json"):
        BundleReader(tmp_path / "d").manifest()


# --- the volume filler, on a plain folder ---------------------------------------------------------------------------

SPEC = {"files": {"m/model.gguf": [len(MODEL_BYTES), sha(MODEL_BYTES)]}, "records": [STATE, ".r1kit/tiny.path"]}


def tar_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def filler(mode: str, root: Path, spec: dict, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", FILL_SCRIPT.read_text(), mode, str(root), json.dumps(spec)], input=stdin, capture_output=True)


def state_bytes() -> bytes:
    return json.dumps({"complete": True, "engine_path": "m/model.gguf",
                       "files": {"m/model.gguf": {"size": len(MODEL_BYTES), "sha256": sha(MODEL_BYTES), "stat": [0, 0]}}}).encode()


def test_the_filler_writes_files_then_the_records_with_their_stats(tmp_path: Path):
    done = filler("fill", tmp_path, SPEC, tar_of({"m/model.gguf": MODEL_BYTES, STATE: state_bytes(), ".r1kit/tiny.path": b"/models/m/model.gguf\n"}))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "m/model.gguf").read_bytes() == MODEL_BYTES
    state = json.loads((tmp_path / STATE).read_text())
    st = (tmp_path / "m/model.gguf").stat()
    assert state["files"]["m/model.gguf"]["stat"] == [st.st_size, st.st_mtime_ns], "model-init's done() compares exactly this"
    assert (tmp_path / ".r1kit/tiny.path").read_text() == "/models/m/model.gguf\n"
    assert not list(tmp_path.rglob("*.bundle-partial"))
    assert json.loads(filler("survey", tmp_path, SPEC).stdout) == ["m/model.gguf"]


def test_the_filler_refuses_bytes_that_differ_and_keeps_nothing_of_them(tmp_path: Path):
    bad = bytearray(MODEL_BYTES)
    bad[5] ^= 1
    done = filler("fill", tmp_path, SPEC, tar_of({"m/model.gguf": bytes(bad), STATE: state_bytes()}))
    assert done.returncode != 0 and b"m/model.gguf: the bytes streamed differ" in done.stderr
    assert not (tmp_path / "m/model.gguf").exists() and not (tmp_path / STATE).exists()
    assert not list(tmp_path.rglob("*.bundle-partial"))


def test_a_killed_fill_leaves_no_records_and_the_rerun_completes_it(tmp_path: Path):
    # Killed mid-file: the stream ends inside the model's bytes.
    whole = tar_of({"m/model.gguf": MODEL_BYTES, STATE: state_bytes()})
    cut = filler("fill", tmp_path, SPEC, whole[: len(whole) // 2])
    assert cut.returncode != 0
    assert not (tmp_path / "m/model.gguf").exists() and not (tmp_path / STATE).exists(), "nothing looks complete"
    assert json.loads(filler("survey", tmp_path, SPEC).stdout) == []
    assert filler("fill", tmp_path, SPEC, whole).returncode == 0
    assert (tmp_path / "m/model.gguf").read_bytes() == MODEL_BYTES and json.loads((tmp_path / STATE).read_text())["complete"]
    # A rerun with the model in place sends only the records.
    assert filler("fill", tmp_path, SPEC, tar_of({STATE: state_bytes()})).returncode == 0


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "m/../../x", "other.gguf"])
def test_the_filler_writes_nothing_outside_its_model(tmp_path: Path, name: str):
    root = tmp_path / "models"
    root.mkdir()
    done = filler("fill", root, SPEC, tar_of({name: b"x"}))
    assert done.returncode != 0 and b"refusing" in done.stderr
    assert [p for p in tmp_path.rglob("*") if p != root] == []


# --- stacks ---------------------------------------------------------------------------------------------------------

def test_stack_names_come_from_the_stack_files():
    names = stacks.stack_names(REPO / "stacks")
    assert {"llamacpp", "llamacpp-cpu", "vllm", "ollama", "ollama-cpu"} <= set(names)
    assert stacks.compose_files(REPO / "stacks", "llamacpp-cpu") == ("llamacpp-webui.yml", "llamacpp-cpu.yml")
    with pytest.raises(UserError, match="no stack 'vllm-cpu'"):
        stacks.compose_files(REPO / "stacks", "vllm-cpu")


def test_secrets_are_never_settings():
    secrets = stacks.secret_variables(REPO / "stacks")
    assert {"HF_TOKEN", "LLAMACPP_API_KEY", "WEBUI_SECRET_KEY", "VLLM_API_KEY"} <= secrets
    assert "MODEL" in stacks.stack_variables(REPO / "stacks") - secrets


def test_settings_are_what_compose_resolves_without_the_secrets():
    """compose's own resolution (environment over .env), so the loaded stack runs the same images and model."""
    folder = REPO / "stacks"
    env = {"PATH": os.environ["PATH"], "HOME": os.environ["HOME"], "COMPOSE_PROJECT_NAME": "r1kit-bundle-unit",
           "LLAMACPP_CPU_IMAGE": "example/llamacpp-cpu:1", "LLAMACPP_API_KEY": "a-secret-value", "HF_TOKEN": "hf_secret"}
    stack = stacks.resolve(folder, "llamacpp-cpu", {**env, "MODEL": "r1-671b-ud-iq1_s"})
    assert stack.model == "r1-671b-ud-iq1_s" and stack.volume == "r1kit-bundle-unit_models"
    assert stack.path_file == ".r1kit/r1-671b-ud-iq1_s.path" and "example/llamacpp-cpu:1" in stack.images
    settings = stacks.settings(stack, {**env, "MODEL": "r1-671b-ud-iq1_s"})
    assert settings["LLAMACPP_CPU_IMAGE"] == "example/llamacpp-cpu:1" and settings["MODEL"] == "r1-671b-ud-iq1_s"
    assert "a-secret-value" not in settings.values() and "hf_secret" not in settings.values()
