"""Runs inside a container with the model volume on ROOT (the stack's own model-init image, as its user): the one
program that writes a bundle's model into the volume. Standard library only, so that any image with Python 3 runs
it; `builder bundle load` passes this file's text to `python3 -c`.

    survey ROOT SPEC          print, as JSON, the model files already in place (size and sha256 as SPEC says)
    fill ROOT SPEC < TAR      write the files of the tar stream on stdin, each verified as it streams

SPEC (JSON): {"files": {PATH: [SIZE, SHA256]}, "records": [PATH, ...]}. The files are the model's; the records are
model-init's own files under ROOT/.r1kit (the download's state, the engine's path file), written last, so that
model-init finds the download complete only once every file is in place. Each file goes to a temporary name beside
its target and is renamed into place once its sha256 matched: a run killed at any point leaves no file that looks
complete and is not, and the next run writes only what is missing. The state's `stat` of each file is rewritten to
the file written here, which is what model-init compares to trust a finished download without hashing it again.
"""

import hashlib
import json
import os
import sys
import tarfile

CHUNK = 8 * 1024 * 1024
LOAD_RECORD = ".r1kit/bundle-load.json"  # the files this program put in place: trusted by size and mtime


def fail(message):
    sys.stderr.write(message + "\n")
    sys.exit(3)


def target(root, path):
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        fail(f"refusing the path {path!r}: it would leave the volume")
    return os.path.join(root, *parts)


def stat_key(path):
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def write_atomic(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.bundle-partial"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def in_place(root, spec):
    """The model files whose bytes are already right: recorded by an earlier run and unchanged, or hashed now."""
    record = read_json(os.path.join(root, LOAD_RECORD))
    found = []
    for path, (size, sha) in spec["files"].items():
        full = target(root, path)
        if not os.path.isfile(full) or os.path.getsize(full) != size:
            continue
        mine = record.get(path)
        if (mine and mine["sha256"] == sha and mine["stat"] == stat_key(full)) or sha256_of(full) == sha:
            found.append(path)
    return found


def fill(root, spec, stream):
    record_path = os.path.join(root, LOAD_RECORD)
    record = read_json(record_path)
    records = {}
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                fail(f"refusing {member.name!r}: not a regular file")
            full = target(root, member.name)
            source = tar.extractfile(member)
            if member.name in spec["records"]:
                records[member.name] = source.read()
                continue
            if member.name not in spec["files"]:
                fail(f"refusing {member.name!r}: not a file of the bundle's model")
            size, sha = spec["files"][member.name]
            os.makedirs(os.path.dirname(full), exist_ok=True)
            tmp = f"{full}.bundle-partial"
            digest = hashlib.sha256()
            with open(tmp, "wb") as out:
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if os.path.getsize(tmp) != size or digest.hexdigest() != sha:
                os.unlink(tmp)
                fail(f"{member.name}: the bytes streamed differ from the bundle's manifest (sha256); nothing of it was kept")
            os.chmod(tmp, 0o644)
            os.replace(tmp, full)
            record[member.name] = {"sha256": sha, "stat": stat_key(full)}
            write_atomic(record_path, json.dumps(record, indent=1).encode())
    missing = set(spec["files"]) - set(in_place(root, spec))
    if missing:
        fail(f"the volume still lacks {', '.join(sorted(missing))}")
    # model-init's records last: the path file, then the state that says the download is complete.
    for path, data in sorted(records.items(), key=lambda item: item[0].endswith(".json")):
        if path.endswith(".json"):
            state = json.loads(data)
            for name, entry in state.get("files", {}).items():
                entry["stat"] = stat_key(target(root, name))
            data = json.dumps(state, indent=1).encode()
        write_atomic(target(root, path), data)


def main(argv):
    mode, root, spec = argv[1], argv[2], json.loads(argv[3])
    os.umask(0o022)  # as model-init: readable by every engine's user
    if mode == "survey":
        print(json.dumps(in_place(root, spec)))
    elif mode == "fill":
        fill(root, spec, sys.stdin.buffer)
    else:
        fail(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv)
