"""`builder download`: preflight, resumable fetch, verification and a done marker for a selection of Hub files.

Files land at DEST/<path in repo>, the layout of huggingface_hub's `local_dir`. The bytes are fetched here rather
than with `hf_hub_download`: huggingface_hub 2.x writes each attempt to a process-unique temporary file and deletes
it when the process fails, so a download killed at 90% (a container stopped, a host rebooted) would start over.
Here a partial file keeps a stable name under DEST/.r1kit/partial/ and the next run asks for the rest (HTTP Range),
part by part where builder/transfer.py fetched a large file in parallel parts. The Hub API (repo info, file listing,
errors, headers, token) and the HTTP session are still huggingface_hub's.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Callable, Iterable, Iterator

import httpx2
import huggingface_hub
from huggingface_hub import HfApi, constants, get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import build_hf_headers

from builder.core.errors import UserError, raise_stopped, shown
from builder.core.paths import atomic_write
from builder.core.progress import DownloadProgress, human
from builder.core.values import unsafe_character
from builder.models import transfer
from builder.models.catalog import SHARD, Selection, describe_files

MIB = 1024**2
# Free space left after the download unless --min-free says otherwise: 3% of what is written, at least 16 MiB for
# the markers and logs. It scales with the download: a fixed gigabyte refused a 465 KiB model on 50 MiB free.
MARGIN_FRACTION = 0.03
MARGIN_FLOOR = 16 * MIB
SIZE = re.compile(r"^(\d+(?:\.\d+)?) ?([KMGT]?)(?:I?B)?$", re.IGNORECASE)
SIZE_MAX = 2**60  # an exbibyte: anything larger is a typo
DEFAULT_TOKEN_PATH = Path("/run/secrets/hf_token")  # where compose mounts a `secrets: [hf_token]`
TOKEN_HINT = "set HF_TOKEN, or HF_TOKEN_PATH to a file holding it (a compose secret), and accept the model's terms on its Hub page"
STATE_DIR = ".r1kit"
LOCK_NAME = "download.lock"  # in DEST/.r1kit: one run at a time writes a DEST's partial files and records
NAME_MAX = 255  # bytes in one file name: ext4, xfs, btrfs, overlayfs, tmpfs, NFS (os.pathconf says where it can)
PATH_MAX = 4096  # bytes in a path the kernel accepts
# A partial file's name, with room for what is added to it: its control record's suffix, and around that
# atomic_write's temp name (".NAME.XXXXXXXX.tmp"), all within NAME_MAX.
PARTIAL_NAME_MAX = NAME_MAX - len(transfer.RECORD_SUFFIX) - len("..XXXXXXXX.tmp")
DIGEST = 16  # hex digits of sha256 that tell apart long names cut to the same prefix
CHUNK = 1024 * 1024
MERGE_TOOL = "llama-gguf-split"
# Parallel ranged fetches (builder/transfer.py). Both defaults come from the benchmark in docs/PERFORMANCE.md.
CONNECTIONS = 16
CONNECTIONS_MAX = 32  # a bound, so that a home link (and the CDN's patience) is not flooded
PART_SIZE = 64 * MIB
PART_SIZE_MIN = MIB  # smaller parts are all request overhead


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None  # the LFS oid; small non-LFS files are checked by size only


@dataclass(frozen=True)
class DownloadPlan:
    """The preflight's result: what to fetch, where, and whether it fits. Nothing is written to make it."""

    selection: Selection
    endpoint: str
    commit: str
    files: tuple[RemoteFile, ...]
    dest: Path
    engine_path: Path  # what the engine loads: the first shard, the single .gguf, or DEST for safetensors
    format: str
    to_fetch: int  # bytes still missing (complete files and partial downloads accounted for)
    extra: int  # bytes the merge will write (none where it hard-links a single file, or its output is up to date)
    free: int

    @property
    def total(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def gguf_files(self) -> tuple[RemoteFile, ...]:
        return tuple(f for f in self.files if f.path.endswith(".gguf"))


# --- token -------------------------------------------------------------------------------------------------------


def read_token(env: dict[str, str] | None = None) -> str | None:
    """HF_TOKEN, else the file HF_TOKEN_PATH names (default: a compose secret at /run/secrets/hf_token). An empty
    value means no token (compose writes an empty secret from an unset variable)."""
    env = dict(os.environ) if env is None else env
    if env.get("HF_TOKEN", "").strip():
        return env["HF_TOKEN"].strip()
    path = Path(env["HF_TOKEN_PATH"]) if env.get("HF_TOKEN_PATH") else DEFAULT_TOKEN_PATH
    if env.get("HF_TOKEN_PATH") and not path.is_file():
        raise UserError(f"HF_TOKEN_PATH names {path}, which is not a readable file")
    try:
        return path.read_text().strip() or None
    except OSError:
        pass
    try:  # last, a token stored by `hf auth login` on this host (HF_HOME/token)
        return huggingface_hub.get_token() or None
    except OSError:
        return None


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


@contextmanager
def hub_errors(selection: Selection, token: str | None) -> Iterator[None]:
    """huggingface_hub's and the network's exceptions as one-line UserErrors. Never includes the token."""
    where = endpoint()
    try:
        yield
    except GatedRepoError:
        raise UserError(f"{selection.repo} is gated: {TOKEN_HINT}") from None
    except RevisionNotFoundError:
        raise UserError(f"{selection.repo} has no revision {shown(selection.revision)}") from None
    except RepositoryNotFoundError:
        hint = "" if token else f" (if it is private or gated: {TOKEN_HINT})"
        raise UserError(f"no repository {selection.repo} at {where}: check the name{hint}") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        if status in (401, 403):
            raise UserError(f"{where} refused access to {selection.repo} (HTTP {status}): {TOKEN_HINT}") from None
        raise UserError(f"{where} answered HTTP {status} for {selection.repo}; try again later") from None
    except httpx2.TransportError as e:
        raise UserError(f"cannot reach {where} ({type(e).__name__}: {e}); check the network, or set HF_ENDPOINT to a mirror") from None


# --- paths under DEST ----------------------------------------------------------------------------------------------


def target_in(dest: Path, path: str) -> Path:
    """DEST/<path>, where a listed file lands; a UserError where the path could leave DEST. The listing comes from
    the Hub or whatever HF_ENDPOINT names, so it is input: `../x`, `/etc/x`, `a\\..\\x` (a Windows reader's `..`)
    or a path through a symlink in DEST that points elsewhere are refused before anything is written."""
    parts = path.split("/")
    bad = (
        not path
        or "\\" in path
        or "\0" in path
        or re.match(r"^[A-Za-z]:", path) is not None  # a drive letter
        or any(part in ("", ".", "..") for part in parts)  # also a leading "/" (an absolute path) and "a//b"
    )
    target = dest / path
    if bad or not target.resolve().is_relative_to(dest.resolve()):
        raise UserError(f"the file listing names {shown(path, 200)}, which is outside {dest}: refusing to download it (a Hub repo holds no such path; check the repo and HF_ENDPOINT)")
    return target


# --- local state: partial files, verified files, the done marker ---------------------------------------------------


def _state_path(dest: Path, selection: Selection) -> Path:
    key = json.dumps([selection.repo, selection.revision, sorted(selection.include), selection.quant])
    return dest / STATE_DIR / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def _partial_path(dest: Path, f: RemoteFile) -> Path:
    # Keyed by content (sha256, else size) so that a changed upstream file never resumes from stale bytes.
    return dest / STATE_DIR / "partial" / partial_name(f.path, (f.sha256 or f"size{f.size}")[:16])


def partial_name(path: str, tag: str) -> str:
    """The partial file's name for a listed path: the path flattened (`/` as `__`), as it always was where that fits
    PARTIAL_NAME_MAX bytes (so earlier runs' partial files still resume). A longer one keeps a readable prefix, cut
    on a UTF-8 character's boundary, and a digest of the whole path: the same name on every run, so resume finds it."""
    suffix = f".{tag}.part"
    flat = path.replace("/", "__")
    if len(flat.encode()) + len(suffix.encode()) <= PARTIAL_NAME_MAX:
        return flat + suffix
    digest = "~" + hashlib.sha256(path.encode()).hexdigest()[:DIGEST]
    room = PARTIAL_NAME_MAX - len(suffix.encode()) - len(digest)
    return flat.encode()[:room].decode(errors="ignore") + digest + suffix


def clean_leftovers(dest: Path, selection: Selection) -> None:
    """Remove the temporary files of this selection's done marker that a killed run left behind (killed between
    writing one and renaming it). Only this selection's: another selection's run may be writing its own now."""
    state = _state_path(dest, selection)
    for tmp in state.parent.glob(f".{state.name}.*.tmp"):
        tmp.unlink(missing_ok=True)


def _read_state(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _stat_key(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def done(selection: Selection, dest: Path) -> Path | None:
    """The engine path if a previous run finished this selection and no file changed since (size and mtime): a
    restart is then instant and needs no network. None otherwise."""
    state = _read_state(_state_path(dest, selection))
    if not state.get("complete"):
        return None
    try:
        for path, record in state["files"].items():
            if _stat_key(target_in(dest, path)) != record["stat"]:
                return None
        # "." is DEST itself, what a safetensors engine loads (target_in refuses it as a listed path).
        return dest if state["engine_path"] == "." else target_in(dest, state["engine_path"])
    except (UserError, KeyError, TypeError, AttributeError):  # a marker edited by hand: take the slow path, which checks the listing again
        return None


# --- one run per DEST ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DestLock:
    """DEST's download lock, held: the lock file's descriptor, and the topmost folder taking it created (DEST, or its
    state folder), removed again where a refused run leaves it empty."""

    fd: int
    created: Path | None


@contextmanager
def locked(dest: Path, note: Callable[[str], None]) -> Iterator[None]:
    """Hold DEST's download lock (flock on DEST/.r1kit/download.lock) while a run cleans, fetches, records and merges.
    Two runs into one DEST used to write the same partial files: one moved a file into place and the other failed
    on it ("No such file or directory"), and left a parts record no later run removed. A second run waits rather
    than refusing: in a compose stack two services' model-init (or a user's second terminal) want the same model,
    and after the wait the finished marker makes the second run instant; where the first died, the second resumes
    its partial files. The kernel drops the lock of a killed run, so it never goes stale. Ctrl-C and SIGTERM stop
    the wait like any other step. Where DEST cannot be written (a read-only volume), no lock is taken: this run
    writes nothing there either, and answers only for a download already finished."""
    held = _acquire(dest, note)
    try:
        yield
    finally:
        if held is not None:
            _release(dest, held)


def _lock_path(dest: Path) -> Path:
    return dest / STATE_DIR / LOCK_NAME


def _acquire(dest: Path, note: Callable[[str], None]) -> DestLock | None:
    path = _lock_path(dest)
    waited = False
    while True:
        held = _open_lock(path)
        if held is None:
            return None
        try:
            try:
                fcntl.flock(held.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited:
                    note(f"another builder download into {dest} is running{_holder(held.fd)}: waiting for it to finish")
                    waited = True
                fcntl.flock(held.fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(held.fd)
            raise
        if _still_there(held.fd, path):
            break
        os.close(held.fd)  # the run we waited for removed this lock file as it finished: lock the one there now
    if waited:
        note(f"the other download into {dest} is over: going on")
    os.ftruncate(held.fd, 0)
    os.pwrite(held.fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)  # for a waiting run's message
    return held


def _open_lock(path: Path) -> DestLock | None:
    """The lock file, opened (created with its folders); None where DEST is not writable by this user."""
    while True:
        created = None
        probe = path.parent
        while not probe.exists() and probe != probe.parent:
            created, probe = probe, probe.parent
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return DestLock(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644), created)
        except FileNotFoundError:
            continue  # the holder removed the empty folders between our mkdir and open: make them again
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                return None
            raise UserError(f"--dest {path.parent.parent}: cannot take the download lock {path} ({e.strerror})") from None


def _holder(fd: int) -> str:
    """` (pid N on HOST)`, as the holder wrote it; nothing where it has not yet, or the file holds something else."""
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        return ""
    return f" ({text})" if text.startswith("pid ") and unsafe_character(text) is None else ""


def _still_there(fd: int, path: Path) -> bool:
    """Whether the file locked is still the one at `path`, not one its holder removed before letting go."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _release(dest: Path, held: DestLock) -> None:
    """Remove the lock file while still holding it (a waiting run then sees it gone and locks a new one), and the
    folders taking the lock created where they are left empty (a refused run leaves nothing), then let go."""
    path = _lock_path(dest)
    try:
        path.unlink(missing_ok=True)
        folder = path.parent
        top = held.created or folder
        while folder.is_relative_to(top):
            try:
                folder.rmdir()
            except OSError:
                break  # not empty: this DEST's records and partial files, or the user's files
            folder = folder.parent
    finally:
        os.close(held.fd)


# --- preflight -----------------------------------------------------------------------------------------------------


def _engine_path(selection: Selection, files: list[RemoteFile], dest: Path, fmt: str) -> Path:
    if fmt != "gguf":
        return dest
    # mmproj files are vision projectors, loaded beside a model, never as the model.
    models: dict[str, list[tuple[int, int, str]]] = {}
    for f in files:
        if not f.path.endswith(".gguf") or "mmproj" in f.path.lower():
            continue
        m = SHARD.match(f.path)
        if m:
            models.setdefault(m["stem"], []).append((int(m["index"]), int(m["count"]), f.path))
        else:
            models[f.path] = [(1, 1, f.path)]
    if len(models) != 1:
        names = ", ".join(sorted(Path(k).name for k in models)[:10])
        raise UserError(f"{len(models)} GGUF models of {selection.repo} match ({names}): pick one with {selection.repo}:QUANT or a narrower --include")
    (stem, shards), = models.items()
    count = shards[0][1]
    if sorted(i for i, _, _ in shards) != list(range(1, count + 1)):
        raise UserError(f"{stem}: {len(shards)} of its {count} shards match; include them all")
    return dest / min(shards)[2]


def _listing(api: HfApi, selection: Selection, commit: str) -> list[RemoteFile]:
    entries = api.list_repo_tree(selection.repo, revision=commit, recursive=True)
    files = [RemoteFile(e.path, e.lfs.size if e.lfs else e.size, e.lfs.sha256 if e.lfs else None) for e in entries if isinstance(e, RepoFile)]
    for f in files:
        _check_listed(selection, "a file named", f.path)
    return files


def _check_listed(selection: Selection, what: str, value: str) -> None:
    """Every name the Hub (or whatever HF_ENDPOINT names) lists ends up in log lines, error lines and file names: a
    line break or another control character in one could forge a line ("done: ..."), so the whole listing is
    refused, selected files or not, before anything is written. The Hub allows no such name."""
    ch = unsafe_character(value)
    if ch is not None:
        raise UserError(f"{selection.repo} lists {what} {shown(value, 200)} holding the control character {ch!r}: refusing to download from it (the Hub allows no such name; check the repo and HF_ENDPOINT)")


def _check_name_lengths(selection: Selection, dest: Path, f: RemoteFile) -> None:
    """A listed path this file system cannot hold (a name over NAME_MAX bytes, a path over PATH_MAX) is refused in
    the preflight, in one line, rather than failing after a download with a promise to resume that never comes."""
    try:
        name_max = os.pathconf(_nearest(dest), "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = NAME_MAX
    for part in f.path.split("/"):
        if len(part.encode()) > name_max:
            raise UserError(f"{selection.repo} lists {shown(f.path, 200)}, whose name {shown(part, 60)} is {len(part.encode())} bytes: the file system of {dest} holds names of {name_max} bytes at most")
    if len(str(dest / f.path).encode()) >= PATH_MAX:
        raise UserError(f"{selection.repo} lists {shown(f.path, 200)}: under {dest} its path is longer than the {PATH_MAX} bytes a path may have; choose a shorter --dest")


def _free_space(dest: Path) -> int:
    return shutil.disk_usage(_nearest(dest)).free


def _nearest(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def margin(needed: int, min_free: int | None = None) -> int:
    """Space to leave free once `needed` bytes are written: --min-free, else a few percent of the download with a
    small floor. Nothing to write, nothing to keep free."""
    if not needed:
        return 0
    return min_free if min_free is not None else max(MARGIN_FLOOR, int(needed * MARGIN_FRACTION))


def parse_size(text: str) -> int:
    """`500M`, `2G`, `1.5GiB`, `100K`, `0`: bytes, in binary units as the preflight prints them."""
    m = SIZE.match(text.strip())
    if not m:
        raise UserError(f"{shown(text)} is not a size such as 500M, 2G or 0")
    value = Decimal(m[1]) * 1024 ** "_KMGT".index((m[2] or "_").upper())
    if value > SIZE_MAX:
        raise UserError(f"{shown(text)} is larger than any disk")
    return int(value)


def _check_space(where: Path, what: str, needed: int, min_free: int | None) -> int:
    """The free space at `where`; a UserError if `needed` bytes and the margin do not fit."""
    free = _free_space(where)
    keep = margin(needed, min_free)
    if needed + keep > free:
        raise UserError(
            f"not enough space in {where}: {what} needs {human(needed)} more (+ {human(keep)} margin), "
            f"{human(free)} is free; free some space, choose another --dest, or set the margin with --min-free"
        )
    return free


def _missing_bytes(dest: Path, f: RemoteFile, verified: dict) -> int:
    target = dest / f.path
    if f.path in verified and _stat_key(target) == verified[f.path]["stat"]:
        return 0
    if target.is_file() and target.stat().st_size == f.size:
        return 0  # present: verified (and fetched again only if corrupt) during the download
    return transfer.missing(_partial_path(dest, f), f.size)


def plan(selection: Selection, dest: Path, token: str | None, *, merge: Path | None = None, force: bool = False,
         min_free: int | None = None) -> DownloadPlan:
    """List the files and sizes, check that every path stays under DEST and that they fit: the preflight. Fetches
    no model byte, writes nothing."""
    dest = dest.resolve()
    api = HfApi(endpoint=endpoint(), token=token or False)
    with hub_errors(selection, token):
        info = api.model_info(selection.repo, revision=selection.revision)
        if info.gated and not token:
            raise UserError(f"{selection.repo} is gated and no token is set: {TOKEN_HINT}")
        commit = info.sha or selection.revision
        _check_listed(selection, "the commit", commit or "")
        listing = _listing(api, selection, commit)
        files = sorted((f for f in listing if selection.matches(f.path)), key=lambda f: f.path)
        if not files:
            what = f"quant {shown(selection.quant)}" if selection.quant else f"--include {shown(' '.join(selection.include), 200)}"
            raise UserError(f"nothing in {selection.repo} matches {what}; it has: {describe_files(f.path for f in listing)}")
        if info.gated:
            # A gated repo lists its files to anyone; a token without access (terms not accepted) fails only on a
            # file. Ask for one file's headers now rather than after the log has started.
            get_hf_file_metadata(hf_hub_url(selection.repo, files[0].path, revision=commit, endpoint=endpoint()), token=token)
    for f in files:  # every path this run would write, before it writes any
        target_in(dest, f.path)
        _check_name_lengths(selection, dest, f)
    fmt = selection.model.format if selection.model else ("gguf" if all(f.path.endswith(".gguf") for f in files) else "safetensors")
    engine = _engine_path(selection, files, dest, fmt)
    verified = _read_state(_state_path(dest, selection)).get("files", {})
    to_fetch = sum(_missing_bytes(dest, f, verified) for f in files)
    merge = merge.resolve() if merge is not None else None
    extra = 0 if merge is None else _merge_preflight(dest, files, engine, fmt, merge, force)
    if merge is not None and extra and not _same_filesystem(dest, merge.parent):
        _check_space(merge.parent, f"--merge {merge.name}", extra, min_free)  # it writes there, not in DEST
        free = _check_space(dest, selection.label, to_fetch, min_free)
    else:
        free = _check_space(dest, selection.label, to_fetch + extra, min_free)
    return DownloadPlan(selection, endpoint(), commit, tuple(files), dest, engine, fmt, to_fetch, extra, free)


def _merge_preflight(dest: Path, files: list[RemoteFile], engine: Path, fmt: str, out: Path, force: bool) -> int:
    """--merge's checks, before a byte is fetched; the bytes the merge will write."""
    if fmt != "gguf":
        raise UserError("--merge is for GGUF models")
    check_merge_output(dest, out, force)
    if SHARD.match(engine.name) and shutil.which(MERGE_TOOL) is None:
        raise UserError(f"--merge needs llama.cpp's {MERGE_TOOL} on PATH (the r1kit llama.cpp and model-init images have it)")
    return _merge_bytes(dest, out, _model_sources(((f.path, f.size, f.sha256) for f in files), dest, engine))


def describe(p: DownloadPlan) -> list[str]:
    """The plan as text: one line per file, then the totals (what --dry-run prints, and the log's preflight)."""
    lines = [f"{p.selection.label}: {p.selection.repo} @ {p.commit[:12]} from {p.endpoint}"]
    lines += [f"  {human(f.size):>10}  {f.path}" for f in p.files]
    lines.append(f"  {human(p.total):>10}  total in {len(p.files)} file(s); {human(p.to_fetch)} to fetch" + (f", {human(p.extra)} to merge" if p.extra else ""))
    lines.append(f"destination {p.dest} ({human(p.free)} free)")
    return lines


# --- fetch and verify ----------------------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK * 8):
            digest.update(chunk)
    return digest.hexdigest()


def _intact(path: Path, f: RemoteFile) -> bool:
    return path.is_file() and path.stat().st_size == f.size and (f.sha256 is None or sha256_of(path) == f.sha256)


def fetch(p: DownloadPlan, token: str | None, progress: DownloadProgress, *, verify: bool = False, connections: int = CONNECTIONS,
          part_size: int = PART_SIZE) -> None:
    """Fetch every file not yet complete, up to `connections` ranged requests at once; verify each (sha256 or size),
    record it, then write the done marker."""
    state_path = _state_path(p.dest, p.selection)
    state = _read_state(state_path)
    verified: dict = state.get("files", {}) if state.get("commit") == p.commit else {}
    progress.start(p.total, len(p.files))
    try:
        wanted = _check_present(p, progress, verified, state_path, verify)
        settings = transfer.TransferSettings(connections, part_size, p.endpoint, build_hf_headers(token=token or False))
        lock = threading.Lock()

        def finish(w: transfer.Wanted) -> None:
            f = p.files[w.index - 1]
            progress.note(f"verifying {f.path} (sha256)" if f.sha256 else f"checking {f.path} (size)")
            if not _intact(w.partial, f):
                w.partial.unlink()
                raise UserError(f"{f.path}: the downloaded file does not match the Hub's sha256; run the same command again to fetch it anew")
            target = target_in(p.dest, f.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            w.partial.chmod(0o644)
            os.replace(w.partial, target)
            _record(p, verified, state_path, f, target, lock)

        with hub_errors(p.selection, token):
            transfer.Transfer(settings, progress, finish).run(wanted)
    finally:  # stop the live bars on errors and Ctrl-C too, so the terminal is left clean
        progress.close()
    atomic_write(state_path, json.dumps(_state(p, verified, complete=True), indent=1))


def _check_present(p: DownloadPlan, progress: DownloadProgress, verified: dict, state_path: Path, verify: bool) -> list[transfer.Wanted]:
    """Files already in place: trusted (the record says verified and they did not change), verified now, or found
    corrupt and removed. The rest, to fetch."""
    wanted = []
    for index, f in enumerate(p.files, 1):
        target = target_in(p.dest, f.path)
        if not verify and f.path in verified and _stat_key(target) == verified[f.path]["stat"]:
            continue
        if target.exists():
            progress.note(f"verifying {f.path} (sha256)" if f.sha256 else f"checking {f.path} (size)")
            if _intact(target, f):
                _record(p, verified, state_path, f, target, None)
                continue
            progress.note(f"{f.path} is corrupt or incomplete (sha256 or size differs from the Hub's): fetching it again")
            target.unlink()
        url = hf_hub_url(p.selection.repo, f.path, revision=p.commit, endpoint=p.endpoint)
        wanted.append(transfer.Wanted(index, f.path, f.size, url, _partial_path(p.dest, f)))
    progress.skip(p.total - sum(w.size for w in wanted))
    return wanted


def _record(p: DownloadPlan, verified: dict, state_path: Path, f: RemoteFile, target: Path, lock: threading.Lock | None) -> None:
    """A file verified: recorded at once, so that after a crash the next run re-hashes none of the files verified."""
    with lock or nullcontext():
        verified[f.path] = {"size": f.size, "sha256": f.sha256, "stat": _stat_key(target)}
        atomic_write(state_path, json.dumps(_state(p, verified, complete=False), indent=1))


def _state(p: DownloadPlan, verified: dict, *, complete: bool) -> dict:
    return {
        "repo": p.selection.repo,
        "revision": p.selection.revision,
        "commit": p.commit,
        "include": list(p.selection.include),
        "quant": p.selection.quant,
        "engine_path": str(p.engine_path.relative_to(p.dest)),
        "files": {path: verified[path] for path in sorted(verified) if path in {f.path for f in p.files}},
        "complete": complete,
    }


# --- merge ---------------------------------------------------------------------------------------------------------

Source = tuple[str, int, "str | None"]  # a file the merge reads: path in the repo, size, sha256


@dataclass(frozen=True)
class MergeRecord:
    """What a merge wrote, kept in DEST/.r1kit/merge-<hash of the output path>.json: the output is ours, and current,
    only while it is the very file recorded here (size, mtime and inode) and the model's files are still `sources`.
    Without it an existing output is someone else's file (or a stale copy) and is never named in a Modelfile."""

    output: str
    sources: tuple[Source, ...]
    stat: tuple[int, int, int]  # size, mtime_ns, inode

    def current(self, out: Path, sources: tuple[Source, ...]) -> bool:
        return self.output == str(out) and self.sources == sources and _merge_stat(out) == self.stat


def _merge_stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _record_path(dest: Path, out: Path) -> Path:
    return dest / STATE_DIR / f"merge-{hashlib.sha256(str(out).encode()).hexdigest()[:16]}.json"


def _read_record(dest: Path, out: Path) -> MergeRecord | None:
    raw = _read_state(_record_path(dest, out))
    try:
        return MergeRecord(raw["output"], tuple(tuple(s) for s in raw["sources"]), tuple(raw["stat"]))  # type: ignore[arg-type]
    except (KeyError, TypeError):
        return None


def _model_sources(files: Iterable[Source], dest: Path, engine: Path) -> tuple[Source, ...]:
    """The files the merge reads: the engine's shard set, or the single file."""
    first = engine.relative_to(dest).as_posix()
    shard = SHARD.match(engine.name)

    def belongs(path: str) -> bool:
        if not shard:
            return path == first
        m = SHARD.match(Path(path).name)
        return bool(m) and m["stem"] == shard["stem"] and m["count"] == shard["count"] and Path(path).parent == Path(first).parent

    return tuple(sorted((path, size, sha) for path, size, sha in files if belongs(path)))


def check_merge_output(dest: Path, out: Path, force: bool) -> None:
    """An existing --merge output that no merge of ours recorded is the user's file: never overwritten without
    --force. Checked in the preflight, before a byte is fetched."""
    record = _read_record(dest, out)
    if (out.exists() or out.is_symlink()) and (record is None or record.output != str(out)) and not force:
        raise UserError(f"--merge {out} exists and builder did not write it: move it away, or add --force to overwrite it")
    if out.is_dir():
        raise UserError(f"--merge {out} is a folder, not a file")


def _same_filesystem(a: Path, b: Path) -> bool:
    return os.stat(_nearest(a)).st_dev == os.stat(_nearest(b)).st_dev


def _merge_bytes(dest: Path, out: Path, sources: tuple[Source, ...]) -> int:
    """What the merge will write: nothing for an output that is current, or for a single file hard-linked (same
    filesystem); else the model's size."""
    record = _read_record(dest, out)
    if record is not None and record.current(out, sources):
        return 0
    if len(sources) == 1 and not SHARD.match(sources[0][0]) and _same_filesystem(dest, out.parent):
        return 0
    return sum(size for _, size, _ in sources)


def _link_or_copy(source: Path, to: Path) -> None:
    """A hard link where the filesystem allows (same filesystem, links supported): the merged "copy" of a 42 GB
    single-file model then costs no disk. Else a copy."""
    try:
        os.link(source, to)
    except OSError:
        shutil.copyfile(source, to)


def merge(dest: Path, selection: Selection, first_shard: Path, out: Path, *, force: bool = False,
          note: Callable[[str], None] = print) -> Path:
    """Join a GGUF shard set into one file with llama.cpp's llama-gguf-split; a single file is hard-linked (or copied).
    A finished download's marker names the sources; the record says whether `out` is what an earlier merge wrote."""
    out = out.resolve()
    files = _read_state(_state_path(dest, selection)).get("files", {})
    sources = _model_sources(((path, r["size"], r["sha256"]) for path, r in files.items()), dest, first_shard)
    record_path = _record_path(dest, out)
    for tmp in record_path.parent.glob(f".{record_path.name}.*.tmp"):  # a killed run's leftovers
        tmp.unlink(missing_ok=True)
    record = _read_record(dest, out)
    if record is not None and record.current(out, sources):
        return out  # merged by an earlier run, and untouched since
    check_merge_output(dest, out, force)
    if out.exists():
        note(f"{out} differs from what builder merged (or the model changed): merging again")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    tmp.unlink(missing_ok=True)
    try:
        if not SHARD.match(first_shard.name):
            _link_or_copy(first_shard, tmp)
        else:
            _run_merge_tool(first_shard, tmp, len(sources), out, note)
        tmp.chmod(0o644)
        # Recorded before the rename (which keeps size, mtime and inode): a kill in between leaves a record that the
        # next run finds stale, so it merges again instead of refusing an output that is ours.
        record = MergeRecord(str(out), sources, _merge_stat(tmp))  # type: ignore[arg-type]
        atomic_write(record_path, json.dumps(asdict(record), indent=1))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _run_merge_tool(first_shard: Path, tmp: Path, count: int, out: Path, note: Callable[[str], None]) -> None:
    tool = shutil.which(MERGE_TOOL)
    if tool is None:
        raise UserError(f"--merge needs llama.cpp's {MERGE_TOOL} on PATH (the r1kit llama.cpp and model-init images have it)")
    note(f"merging {count} shards into {out}")
    result = subprocess.run([tool, "--merge", str(first_shard), str(tmp)], capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"llama-gguf-split --merge failed (exit {result.returncode}): {shown(last[0], 200)}")


# --- stopping ------------------------------------------------------------------------------------------------------


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise Stopped in the main thread. In a container `builder` is PID 1, and the kernel drops
    every signal PID 1 has no handler for: without this, `docker stop` waits its 10 s and kills it. Raising unwinds
    the stack (the partial file is closed with what it holds; temp files of markers and merges are removed), so the
    run ends within a moment and the next one resumes."""

    previous = {signum: signal.signal(signum, raise_stopped) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
