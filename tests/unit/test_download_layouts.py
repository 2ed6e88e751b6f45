"""The catalog against the repositories' real layouts: `builder download --dry-run` on the real file names and the
sizes the Hub lists (tests/support/hub_layouts.py, served as listing-only repos), and a real download from R1-0528's
layout (bare quant folders, tiny sharded GGUFs) on the local Hub."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator

import pytest
from support.builder import builder_in_process
from support.hub import (
    QWEN3_DISTILL_FILE,
    QWEN3_DISTILL_REPO,
    R1_0528_REPO,
    R1_0528_SHARDS,
    R1_0528_TQ1_0,
    files_under,
    hub_sha,
    sha256,
)
from support.hub_layouts import LAYOUTS
from support.local_hub import LocalHub

from builder.core.progress import human
from builder.models import catalog as models

CATALOG = models.load()


def listed(name: str) -> dict[str, int | None]:
    """The files of an entry's repository that its patterns select, with the sizes the Hub lists (None: not seen)."""
    selection = models.resolve(name, catalog=CATALOG)
    return {p: size for p, size in LAYOUTS[selection.repo].items() if selection.matches(p)}


# Entries whose every file's size was read off the Hub: the dry run adds the Hub's own figures, not ours.
SEEN = [name for name in CATALOG.models if all(size is not None for size in listed(name).values())]


def test_the_seen_listings_cover_the_dynamic_quants_and_the_qwen3_distill():
    assert {"r1-671b-ud-iq1_s", "r1-671b-ud-iq2_xxs", "r1-671b-ud-q2_k_xl", "r1-671b-q4_k_m", "r1-0528-qwen3-8b-q4_k_m"} <= set(SEEN)


@pytest.fixture(scope="module")
def layouts_hub() -> Iterator[LocalHub]:
    """A second local Hub holding the real repositories' listings (no bytes): the shared one's repos of the same
    names hold tiny models instead."""
    with LocalHub() as hub:
        for repo, files in LAYOUTS.items():
            hub.add_listing(repo, {p: size or 0 for p, size in files.items()})
        yield hub


@pytest.mark.parametrize("name", SEEN)
def test_the_catalog_size_is_what_the_dry_run_adds_up_from_the_hub(layouts_hub: LocalHub, tmp_path: Path, name: str):
    """The catalog's decimal GB against the dry run's plan of the Hub's listing (which it prints in GiB, as df -h
    does). Where this machine lacks the space, the dry run refuses, naming the same total."""
    total = sum(size or 0 for size in listed(name).values())
    assert abs(total / 1e9 - CATALOG.get(name).approx_size_gb) < 0.05, f"{name}: the Hub lists {total / 1e9:.2f} GB"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=layouts_hub.url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1")
    result = builder_in_process("download", name, "--dest", str(tmp_path / "models"), "--dry-run", env=env, check=False, capture_output=True)
    files = CATALOG.get(name).shards or 1
    if result.returncode == 0:
        assert f"{human(total)}  total in {files} file(s)" in result.stdout, result.stdout
    else:
        assert re.search(rf"not enough space in .*: {name} needs {re.escape(human(total))} more", result.stderr), result.stderr
    assert not (tmp_path / "models").exists()


def test_r1_0528_downloads_from_its_bare_quant_folder(local_hub: LocalHub, hub_env: dict[str, str], tmp_path: Path):
    """`builder download r1-0528-ud-iq1_s`: the four shards of UD-IQ1_S/, verified, and nothing else of the repo
    (neither the one-file TQ1_0 beside the folders nor another quant); the engine's path is the first shard."""
    dest = tmp_path / "models"
    result = builder_in_process("download", "r1-0528-ud-iq1_s", "--dest", str(dest), env=hub_env, capture_output=True)
    assert result.stdout == f"{dest / R1_0528_SHARDS[0]}\n"
    got = sorted(str(p.relative_to(dest)) for p in files_under(dest) if ".r1kit" not in p.parts)
    assert got == R1_0528_SHARDS and not (dest / R1_0528_TQ1_0).exists()
    for path in R1_0528_SHARDS:
        assert sha256(dest / path) == hub_sha(local_hub, R1_0528_REPO, path)


def test_the_qwen3_distill_downloads_with_its_modelfile(hub_env: dict[str, str], tmp_path: Path):
    """The 0528 distill for Ollama: one file, and a Modelfile with R1's template and all 36 layers + the output."""
    dest = tmp_path / "models"
    builder_in_process("download", "r1-0528-qwen3-8b-q4_k_m", "--dest", str(dest), "--modelfile", str(dest / "Modelfile"),
                       env=hub_env, capture_output=True)
    assert [p.name for p in files_under(dest) if ".r1kit" not in p.parts] == [QWEN3_DISTILL_FILE, "Modelfile"]
    text = (dest / "Modelfile").read_text()
    assert text.startswith(f"FROM ./{QWEN3_DISTILL_FILE}\nPARAMETER num_ctx 8192\nPARAMETER num_gpu 37\n") and "<｜Assistant｜>" in text
    assert CATALOG.get("r1-0528-qwen3-8b-q4_k_m").repo == QWEN3_DISTILL_REPO
