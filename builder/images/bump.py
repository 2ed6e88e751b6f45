"""`builder bump`: pin every engine folder with an `upstream:` to its upstream's newest release.

llama.cpp is followed through `llama-cpp-python` on PyPI (docs/DESIGN.md, "Verified sources"): each release's sdist
vendors a whole llama.cpp tree, the index publishes the file's sha256, and its CHANGELOG names the llama.cpp commit
it carries. The bump downloads the sdist, computes the sha256 of the bytes it fetched, refuses them where that
differs from the index's, finds the tree and the commit inside, and only then pins and syncs. Nothing is written
before every check passed.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urljoin

import httpx2

from builder.core.errors import UserError, shown
from builder.core.progress import DownloadProgress
from builder.images import sync
from builder.images.catalog import Pin, load

DEFAULT_INDEX = "https://pypi.org"
# llama-cpp-python's CHANGELOG: "feat: Update llama.cpp to ggml-org/llama.cpp@0c1e57098" in the release's section.
VENDORED_COMMIT = re.compile(r"llama\.cpp@([0-9a-f]{7,40})\b")
TIMEOUT = httpx2.Timeout(30.0, read=120.0)


@dataclass(frozen=True)
class Release:
    """One release's sdist as the index lists it."""

    project: str
    version: str
    url: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Bump:
    before: Pin
    after: Pin

    def summary(self) -> str:
        return (f"{self.after.folder}: {self.before.version} ({self.before.upstream} {self.before.release}) -> "
                f"{self.after.version} ({self.after.upstream} {self.after.release}), sha256 {self.after.sha256} of {self.after.url}")


def latest(client: httpx2.Client, index: str, project: str) -> Release:
    """The newest release's sdist: the index's `info.version` (its newest final release, pre-releases and yanked
    ones left out), and that version's sdist with the sha256 the index publishes."""
    where = f"{index.rstrip('/')}/pypi/{project}/json"
    try:
        r = client.get(where)
    except httpx2.HTTPError as e:
        raise UserError(f"{where}: no answer ({type(e).__name__}): is the package index reachable?") from None
    if r.status_code != 200:
        raise UserError(f"{where}: HTTP {r.status_code}: is {shown(project)} a project on that index?")
    data = r.json()
    version = data["info"]["version"]
    sdists = [u for u in data["urls"] if u["packagetype"] == "sdist" and not u.get("yanked")]
    if not sdists:
        raise UserError(f"{project} {version} has no sdist on {index}: the bump builds from its source archive")
    u = sdists[0]
    # Mirrors answer with URLs relative to the JSON document; PyPI with absolute ones.
    return Release(project, version, urljoin(where, u["url"]), u["digests"]["sha256"], int(u["size"]))


def fetch(client: httpx2.Client, release: Release, into: Path) -> Path:
    """The sdist, downloaded with progress; refused unless the sha256 of its bytes is the index's."""
    path = into / PurePosixPath(release.url).name
    digest = hashlib.sha256()
    progress = DownloadProgress()
    progress.start(release.size, 1)
    progress.file_start(1, release.url, release.size)
    try:
        with client.stream("GET", release.url) as r, path.open("wb") as out:
            if r.status_code != 200:
                raise UserError(f"{release.url}: HTTP {r.status_code}")
            for chunk in r.iter_bytes(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                progress.advance(1, len(chunk))
    except httpx2.HTTPError as e:
        raise UserError(f"{release.url}: the download failed ({type(e).__name__}): run the bump again") from None
    finally:
        progress.close()
    if digest.hexdigest() != release.sha256:
        raise UserError(f"{release.url}: the bytes fetched hash to {digest.hexdigest()}, the index says {release.sha256}: "
                        "nothing pinned")
    return path


def vendored(archive: Path, release: Release, subtree: str) -> tuple[str, str]:
    """(the llama.cpp commit the release carries, the tree's path in the archive), read from the archive itself."""
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        top = next(iter(names)).split("/", 1)[0]
        tree = f"{top}/{subtree}"
        if f"{tree}/CMakeLists.txt" not in names:
            raise UserError(f"{release.project} {release.version}'s sdist has no {tree}/CMakeLists.txt: it vendors no source tree there")
        member = tar.extractfile(f"{top}/CHANGELOG.md") if f"{top}/CHANGELOG.md" in names else None
        changelog = member.read().decode(errors="replace") if member else ""
    section = re.search(rf"^## \[{re.escape(release.version)}\].*?(?=^## \[|\Z)", changelog, re.M | re.S)
    commit = VENDORED_COMMIT.search(section.group(0)) if section else None
    if commit is None:
        raise UserError(f"{release.project} {release.version}: its CHANGELOG names no llama.cpp commit for this release, so "
                        "no image tag can name one: pin it by hand with `builder pin`")
    return commit.group(1), tree


def bump(root: Path, index: str = DEFAULT_INDEX) -> list[Bump]:
    """Check every followed folder's upstream; pin and sync those with a newer release. The bumps made."""
    pins = [p for p in load(root / "images").pins.values() if p.upstream]
    wanted: list[Bump] = []
    with httpx2.Client(timeout=TIMEOUT, follow_redirects=True) as client, tempfile.TemporaryDirectory(prefix="builder-bump-") as tmp:
        for pin in pins:
            release = latest(client, index, pin.upstream)  # type: ignore[arg-type]
            if release.version == pin.release and release.sha256 == pin.sha256:
                continue
            archive = fetch(client, release, Path(tmp))
            subtree = (pin.tree or "").split("/", 1)[-1]
            commit, tree = vendored(archive, release, subtree)
            after = Pin(pin.folder, commit, release.url, release.sha256, tree, pin.upstream, release.version)
            wanted.append(Bump(pin, after))
    for b in wanted:
        sync.pin(root / "images" / b.after.folder, b.after)
    if wanted:
        sync.write(root, load(root / "images"))
    return wanted
