"""The model catalog (builder/models/models.yaml) and turning what the user typed into a selection of Hub files.

A selection is a repository, include patterns and a revision: a catalog name (`r1-671b-ud-iq1_s`), a repository
with patterns (`owner/repo --include '*.gguf'`) or a repository with a quant (`owner/repo:UD-IQ1_S`, the folder or
file-name part every Hub GGUF repo uses). Which files exist is only known from the Hub listing (download.py).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from datetime import date
from importlib import resources
from types import MappingProxyType
from typing import Any, Iterable, Mapping

import yaml
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from builder.core.errors import UserError, shown

FORMATS = ("gguf", "safetensors")
ENGINE_NAME = re.compile(r"^[a-z][a-z0-9-]*$")
QUANT = re.compile(r"^[A-Za-z0-9_.-]+$")
CONTEXT_MAX = 1024 * 1024  # tokens: beyond any model's context, so a larger value is a typo
# A split GGUF's file name, as llama-gguf-split writes it (NAME-00001-of-00003.gguf).
SHARD = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")


@dataclass(frozen=True)
class Model:
    """One catalog entry."""

    name: str
    description: str
    repo: str
    include: tuple[str, ...]
    format: str
    engines: tuple[str, ...]
    approx_size_gb: float | None = None
    shards: int | None = None
    layers: int | None = None
    dense_layers: int | None = None
    template: str | None = None  # the Modelfile's chat template family (gguf only)
    revision: str = "main"
    arch: str | None = None  # a key of the catalog's architectures: what `builder plan` estimates from
    recommend: bool = True  # whether `builder plan` may pick it unasked (not BF16, kept for quantizing)
    released: str | None = None  # ISO date the weights were published: `builder plan` prefers the newer release


@dataclass(frozen=True)
class ModelCatalog:
    models: Mapping[str, Model]
    default: str
    architectures: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))

    def get(self, name: str) -> Model:
        try:
            return self.models[name]
        except KeyError:
            raise UserError(f"unknown model {shown(name)}: choose one of {', '.join(self.models)} (see `builder models`), or give a Hub repo as OWNER/REPO --include GLOB") from None


@dataclass(frozen=True)
class Selection:
    """What to fetch: files of `repo` at `revision` matching `include` (or, with `quant`, the quant's files)."""

    repo: str
    include: tuple[str, ...]
    revision: str = "main"
    quant: str | None = None
    model: Model | None = None  # the catalog entry, where the user named one

    @property
    def label(self) -> str:
        return self.model.name if self.model else self.repo + (f":{self.quant}" if self.quant else "")

    def matches(self, path: str) -> bool:
        if self.quant:
            # A quant names a folder or a file-name part: DeepSeek-R1-UD-IQ1_S/..., model-Q4_K_M.gguf.
            token = re.compile(rf"(^|[-_./]){re.escape(self.quant)}([-_./]|$)", re.IGNORECASE)
            return path.endswith(".gguf") and bool(token.search(path))
        return any(fnmatch.fnmatch(path, pattern) for pattern in self.include)


def _model(name: str, raw: Mapping[str, Any]) -> Model:
    try:
        model = Model(
            name=name,
            description=str(raw["description"]),
            repo=str(raw["repo"]),
            include=tuple(str(p) for p in raw["include"]),
            format=str(raw["format"]),
            engines=tuple(str(e) for e in raw["engines"]),
            approx_size_gb=raw.get("approx_size_gb"),
            shards=raw.get("shards"),
            layers=raw.get("layers"),
            dense_layers=raw.get("dense_layers"),
            template=raw.get("template"),
            revision=str(raw.get("revision", "main")),
            arch=raw.get("arch"),
            recommend=bool(raw.get("recommend", True)),
            released=None if raw.get("released") is None else str(raw["released"]),
        )
    except (KeyError, TypeError) as e:
        raise UserError(f"models.yaml: model {name!r} needs description, repo, include, format and engines ({e})") from None
    if model.released is not None and not _iso_date(model.released):
        raise UserError(f"models.yaml: model {name!r} has released {model.released!r}, which is not a date such as 2025-05-28")
    if model.format not in FORMATS or not all(ENGINE_NAME.match(e) for e in model.engines) or not valid_repo_id(model.repo):
        raise UserError(f"models.yaml: model {name!r} has a bad format, engine or repo")
    return model


def _iso_date(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def check_engines(catalog: ModelCatalog, known: Iterable[str]) -> None:
    """Every engine a model names is one the project runs: `known` comes from the image catalog and the stacks
    (catalog.engines()), never from a list here, so a new engine folder is known without editing this module. Not
    checked inside the model-init image, which carries the builder package without images/."""
    known = set(known)
    for m in catalog.models.values():
        unknown = sorted(set(m.engines) - known)
        if unknown:
            raise UserError(f"models.yaml: model {m.name!r} names engine {unknown[0]!r}, which no image folder or stack runs (known: {', '.join(sorted(known))})")


def valid_repo_id(repo: str) -> bool:
    """OWNER/NAME as huggingface_hub itself accepts it (its own validator: 96 characters at most, no `..` or `--`,
    no leading `-` or `.`, ...), so that no id passes here and then fails inside huggingface_hub with a traceback."""
    if repo.count("/") != 1:
        return False
    try:
        validate_repo_id(repo)
    except HFValidationError:
        return False
    return True


def load(text: str | None = None) -> ModelCatalog:
    """The catalog shipped with the package (or parsed from `text`)."""
    raw = yaml.safe_load(text if text is not None else resources.files("builder.models").joinpath("models.yaml").read_text())
    models = {name: _model(name, spec) for name, spec in raw["models"].items()}
    if raw["default"] not in models:
        raise UserError(f"models.yaml: the default {raw['default']!r} is not in the catalog")
    arches = raw.get("architectures", {})
    for m in models.values():
        if m.arch is not None and m.arch not in arches:
            raise UserError(f"models.yaml: model {m.name!r} names architecture {m.arch!r}, which is not under architectures")
    return ModelCatalog(MappingProxyType(models), raw["default"], MappingProxyType(arches))


def resolve(spec: str, include: Iterable[str] = (), revision: str | None = None, catalog: ModelCatalog | None = None) -> Selection:
    """A catalog name, OWNER/REPO with --include patterns, or OWNER/REPO:QUANT, as a Selection."""
    catalog = catalog or load()
    include = tuple(include)
    if "/" not in spec:
        model = catalog.get(spec)
        # --include replaces the entry's patterns: e.g. one more file of the same repo.
        return Selection(model.repo, include or model.include, revision or model.revision, model=model)
    repo, _, quant = spec.partition(":")
    if not valid_repo_id(repo):
        raise UserError(f"{shown(repo)} is not a Hub repository id such as unsloth/DeepSeek-R1-GGUF")
    if quant and (include or not QUANT.match(quant)):
        raise UserError(f"give either {repo}:QUANT or --include patterns, not both ({shown(spec)})")
    if not quant and not include:
        raise UserError(f"say which files of {repo} to fetch: {repo}:QUANT (e.g. {repo}:Q4_K_M) or --include GLOB")
    return Selection(repo, include, revision or "main", quant=quant or None)


def describe_files(paths: Iterable[str], limit: int = 30) -> str:
    """What a repo holds, for an error: top-level folders and GGUF quants rather than every shard."""
    seen: list[str] = []
    for path in sorted(paths):
        head, sep, _ = path.partition("/")
        item = head + "/" if sep else path
        if item not in seen:
            seen.append(item)
    listed = ", ".join(seen[:limit])
    return listed + (f" and {len(seen) - limit} more" if len(seen) > limit else "") if seen else "no files"
