"""An engine's runtime facts (images/<engine>/runtime.yaml): its port, health path, API-key file variable, metrics
names, and the stack variables `builder plan` writes with the flag each becomes. One home per engine, read by the
planner, the bench, the SLURM job and the stacks' tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import yaml

from builder.core.errors import UserError
from builder.core.paths import images_dir

FILE = "runtime.yaml"
KEYS = {"port", "health", "api_key_file", "metrics", "settings"}
# The gauges in `metrics` that `builder bench --prometheus` records over each level, as the report names them.
GAUGES = ("requests_running", "requests_waiting", "kv_cache_usage")


@dataclass(frozen=True)
class Runtime:
    engine: str
    port: int
    health: str
    api_key_file: str | None  # the engine's variable naming its key file; None: the engine takes no key
    metrics: Mapping[str, str]  # what -> the engine's Prometheus name (output_tokens: its generated-token counter)
    # Stack variable -> the engine flag it becomes: None, not a flag; "", the value is the flag itself.
    settings: Mapping[str, str | None]

    def flags(self, values: Mapping[str, str]) -> tuple[str, ...]:
        """The engine's command-line form of the settings a plan gives (empty values are left out), in this file's
        order: what a user who runs the engine by hand types."""
        out: list[str] = []
        for key, flag in self.settings.items():
            value = values.get(key, "")
            if flag is None or not value:
                continue
            out += [value] if flag == "" else [flag, value]
        return tuple(out)


def _parse(engine: str, raw: Any, where: Path) -> Runtime:
    if not isinstance(raw, dict) or set(raw) != KEYS:
        raise UserError(f"{where}: needs exactly the keys {', '.join(sorted(KEYS))}")
    if not isinstance(raw["port"], int) or not 0 < raw["port"] < 65536 or not str(raw["health"]).startswith("/"):
        raise UserError(f"{where}: port must be a port number and health a path starting with /")
    return Runtime(engine, raw["port"], raw["health"], raw["api_key_file"], MappingProxyType(dict(raw["metrics"] or {})),
                   MappingProxyType(dict(raw["settings"] or {})))


def load(engine: str, images: Path | None = None) -> Runtime:
    folder = images or images_dir()
    path = folder / engine / FILE
    if not path.is_file():
        known = ", ".join(p.parent.name for p in sorted(folder.glob(f"*/{FILE}")))
        raise UserError(f"no runtime facts for engine {engine!r} ({path} is missing; engines with them: {known})")
    return _parse(engine, yaml.safe_load(path.read_text()), path)


def load_all(images: Path | None = None) -> dict[str, Runtime]:
    folder = images or images_dir()
    return {p.parent.name: _parse(p.parent.name, yaml.safe_load(p.read_text()), p) for p in sorted(folder.glob(f"*/{FILE}"))}


def gauges(images: Path | None = None) -> dict[str, tuple[str, ...]]:
    """Each gauge `builder bench --prometheus` records (GAUGES) with every engine's name for it, where it has one."""
    runtimes = load_all(images).values()
    return {what: tuple(r.metrics[what] for r in runtimes if what in r.metrics) for what in GAUGES}


def output_token_counters(images: Path | None = None) -> tuple[str, ...]:
    """Every engine's generated-token counter: `builder bench` reads whichever the server under test exposes."""
    return tuple(r.metrics["output_tokens"] for r in load_all(images).values() if "output_tokens" in r.metrics)
