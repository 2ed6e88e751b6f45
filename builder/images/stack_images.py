"""The images the stacks pull by default, and whether a user can pull each one.

The stacks name our images as `${R1KIT_REGISTRY:-ghcr.io/r1kit}/<target>:<tag>` (stacks/*.yml, stacks/shared/*.yml,
overrides included) and stacks/.env.example quotes them as `${R1KIT_REGISTRY}/<target>:<tag>`; `builder sync` writes
their tags. Images the stacks take from upstream (Ollama, Open WebUI) are not ours and are not listed.

After main publishes, the images workflow asks the registry for each of them without logging in, as a user's
`docker compose up` does (the registry call stays in the workflow), and `builder check-pulls` decides from the
answers: a tag that is not there, or a package the registry refuses to anonymous users (GHCR makes a new package
private), is one error line naming the image, the stack files that name it and what to do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from urllib.parse import quote

from builder.core.errors import UserError, shown
from builder.images.sync import REFERENCE, stack_files
from builder.images.tags import resolve_registry

# How `docker manifest inspect` (or `imagetools inspect`) says that the registry refused an anonymous user, and that
# it has no such tag.
REFUSED = re.compile(r"\b40[13]\b|unauthorized|denied|forbidden", re.IGNORECASE)
ABSENT = re.compile(r"no such manifest|manifest unknown|not found|\b404\b", re.IGNORECASE)


@dataclass(frozen=True)
class StackImage:
    """One image the stacks pull by default, and the files (relative to the repository) that name it."""

    ref: str  # <registry>/<target>:<tag>
    target: str
    files: tuple[str, ...]


def stack_images(root: Path, registry: str | None = None) -> list[StackImage]:
    """Every default image of ours that a stack names, with ${R1KIT_REGISTRY} as `registry` (default: $BUILDER_REGISTRY
    or ghcr.io/r1kit), in the order of the references."""
    base = resolve_registry(registry)
    files: dict[str, list[str]] = {}
    targets: dict[str, str] = {}
    for path in stack_files(root):
        name = str(path.relative_to(root))
        for match in REFERENCE.finditer(path.read_text()):
            ref = f"{base}/{match.group('target')}:{match.group('tag')}"
            targets[ref] = match.group("target")
            if name not in files.setdefault(ref, []):
                files[ref].append(name)
    return [StackImage(ref, targets[ref], tuple(names)) for ref, names in files.items()]


class Pull(Enum):
    PULLS = "pulls"
    ABSENT = "absent"
    REFUSED = "refused"
    UNANSWERED = "unanswered"


@dataclass(frozen=True)
class Answer:
    """The registry's answer to an anonymous `docker manifest inspect REF`: its exit status and what it printed."""

    ref: str
    status: int
    output: str

    @property
    def pull(self) -> Pull:
        if self.status == 0:
            return Pull.PULLS
        if REFUSED.search(self.output):
            return Pull.REFUSED
        return Pull.ABSENT if ABSENT.search(self.output) else Pull.UNANSWERED


def read_answers(path: Path) -> dict[str, Answer]:
    """The workflow's answers file: one `REF<TAB>STATUS<TAB>OUTPUT` line per image it asked about."""
    answers = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        ref, _, rest = line.partition("\t")
        status, _, output = rest.partition("\t")
        if not ref or not status.isdigit():
            raise UserError(f"{path}:{n}: expected REF<TAB>STATUS<TAB>OUTPUT, not {shown(line)}")
        answers[ref] = Answer(ref, int(status), output)
    return answers


def settings_url(ref: str, owner_type: str) -> str | None:
    """The GitHub page where a GHCR package's visibility is changed; None for another registry."""
    host, _, path = ref.rpartition(":")[0].partition("/")
    owner, _, package = path.partition("/")
    if host != "ghcr.io" or not package:
        return None
    kind = "orgs" if owner_type == "Organization" else "users"
    return f"https://github.com/{kind}/{owner}/packages/container/{quote(package, safe='')}/settings"


def problems(images: list[StackImage], answers: dict[str, Answer], owner_type: str = "User") -> list[str]:
    """One line per stack default that a user cannot pull, naming the stack files that name it and what to do."""
    out = []
    for image in images:
        where = f"{image.ref} (named by {', '.join(image.files)})"
        answer = answers.get(image.ref)
        if answer is None:
            out.append(f"{where}: not asked (the answers file has no line for it)")
        elif answer.pull is Pull.ABSENT:
            out.append(f"{where}: not in the registry: its variant's build or merge failed in this run, or never ran")
        elif answer.pull is Pull.REFUSED:
            url = settings_url(image.ref, owner_type)
            fix = f"make the package public at {url}" if url else "let anonymous users pull it"
            out.append(f"{where}: the registry refuses an anonymous pull (a new GHCR package is private): {fix}")
        elif answer.pull is Pull.UNANSWERED:
            out.append(f"{where}: no answer from the registry (status {answer.status}: {shown(answer.output)})")
    return out
