"""What doctor checks against, from the catalogs: the engine image's CUDA (images/<engine>/image.yaml), the model's
size and repository (models.yaml), the stack's shared memory for vLLM; and the checks' report."""

from __future__ import annotations

import os
import re
from pathlib import Path

import builder.images.catalog
from builder.core.errors import UserError
from builder.core.values import unsafe_character
from builder.doctor.checks import GB, Check, CheckContext
from builder.images.docker import docker_clients
from builder.models import catalog
from builder.plan import envfile, planner
from builder.plan.hardware import Machine

SYMBOL = {"ok": "ok  ", "warn": "warn", "fail": "FAIL", "skip": "skip"}
SIZE = re.compile(r"(\d+(?:\.\d+)?)([kmg]?)b?", re.IGNORECASE)


def image_cuda(engine: str) -> str | None:
    """The CUDA version of the engine's default image: the target's cuda_version or cuda option's default, or its
    params' cuda_version (ktransformers); None for an engine whose image is not ours (Ollama)."""
    cat = builder.images.catalog.load()
    for name in (f"{engine}-cuda", engine):
        target = cat.targets.get(name)
        if target is None:
            continue
        for option in ("cuda_version", "cuda"):
            if option in target.options:
                return target.options[option].default
        return target.params.get("cuda_version")
    return None


def stack_token(env_file: Path) -> str | None:
    """The Hub token the stack hands model-init: HF_TOKEN from the environment, else from the stack's .env (a token
    of `hf auth login` on the host does not reach the container, so it is not looked at)."""
    return os.environ.get("HF_TOKEN", "").strip() or envfile.read_values(env_file).get("HF_TOKEN", "").strip() or None


def plan_check(box: Machine, model: str | None, engine: str | None) -> tuple[Check, str | None, str, int | None]:
    """The plan for this machine as a check, the model and engine the other checks are about, and the bytes the stack
    downloads where more than the model's own (ktransformers: its FP8 folder too). Where a named model (or engine)
    does not fit, that check fails and the host is still checked for them: a machine that cannot run vLLM still
    learns what else is missing."""
    try:
        plan, _ = planner.choose(catalog.load(), box, model, engine, None)
    except UserError as e:
        if model is None and engine is not None:  # no model of the catalog fits that engine here: check the rest for it
            return Check("plan", "fail", str(e), "pick another engine, or leave --engine out (`builder plan` recommends one)"), None, engine, None
        if model is None or "/" in model or model.endswith(".gguf"):
            raise
        named = engine or next(iter(catalog.load().get(model).engines), None)
        if named is None:
            raise
        return Check("plan", "fail", str(e), "pick a smaller model or another engine (`builder plan` recommends one)"), model, named, None
    return Check("plan", "ok", f"{plan.model} on {plan.engine}: {plan.expectation}"), plan.model, plan.engine, plan.download or None


def shm_bytes(value: str) -> int | None:
    """compose's shm_size (16g, 512m) in bytes."""
    match = SIZE.fullmatch(value.strip())
    if not match:
        return None
    return int(float(match.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2).lower()])


def check_context(*, engine: str | None, model: str | None, gpu: bool, ports: tuple[tuple[str, int], ...] = (), data_root: Path | None = None,
                  offline: bool = False, engine_image: str | None = None, env: dict[str, str] | None = None,
                  download_bytes: int | None = None) -> CheckContext:
    """download_bytes: what the stack downloads where the plan knows it to be more than the model (Plan.download)."""
    env = dict(os.environ) if env is None else env
    entry = None
    if model is not None and "/" not in model and not model.endswith(".gguf"):
        entry = catalog.load().get(model)
    shm = shm_bytes(env.get("VLLM_SHM_SIZE", "16g")) if engine == "vllm" else None
    clients = docker_clients()
    return CheckContext(
        docker=clients[0] if clients else None, engine=engine, gpu=gpu, image_cuda=image_cuda(engine) if engine and gpu else None,
        engine_image=engine_image, model=model, model_bytes=download_bytes or (int(entry.approx_size_gb * GB) if entry and entry.approx_size_gb else None),
        repo=entry.repo if entry else None, ports=ports, data_root=data_root, hub=not offline, vllm_shm=shm,
    )


def one_line(text: str) -> str:
    """A check's text on one line: a daemon's or a server's words may hold line breaks or control characters."""
    return "".join("?" if unsafe_character(ch) else ch for ch in " ".join(text.split()))


def report(checks: list[Check]) -> str:
    """One line per check, and its fix under it; every value as one plain line (a server's or a file's text included)."""
    lines = []
    for c in checks:
        lines.append(f"{SYMBOL[c.status]}  {c.name:<18} {one_line(c.detail)}")
        if c.fix and c.status in ("warn", "fail"):
            lines.append(f"      {'':<18} fix: {one_line(c.fix)}")
    return "\n".join(lines)
