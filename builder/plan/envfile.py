"""`builder plan --write`: set variables in a compose `.env` file, keeping every other line as it was (the user's
secrets, comments, order), and say what changed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

from builder.core.errors import UserError
from builder.core.paths import atomic_write

ASSIGNMENT = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)$")


def update(path: Path, values: Mapping[str, str]) -> list[tuple[str, str | None, str]]:
    """Write `values` into the env file at `path` (created if missing) and return (key, old, new) for each change.
    The file is replaced in one rename, so an interrupted write leaves the old one."""
    if path.exists() and not path.is_file():
        raise UserError(f"--write {path}: not a file; give the stack's .env file, e.g. stacks/.env")
    if not path.parent.is_dir():
        raise UserError(f"--write {path}: folder {path.parent} does not exist")
    lines = path.read_text().splitlines() if path.exists() else []
    seen: dict[str, str] = {}
    changes: list[tuple[str, str | None, str]] = []
    out: list[str] = []
    for line in lines:
        m = ASSIGNMENT.match(line)
        if m and m.group(1) in values and m.group(1) not in seen:
            key, old = m.group(1), _unquote(m.group(2).strip())
            seen[key] = old
            if old != values[key]:
                changes.append((key, old, values[key]))
                line = f"{key}={values[key]}"
        out.append(line)
    missing = [k for k in values if k not in seen and values[k] != ""]
    if missing:
        out.append("# builder plan")
    for key in missing:
        out.append(f"{key}={values[key]}")
        changes.append((key, None, values[key]))
    if changes:
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
        atomic_write(path, "\n".join(out) + "\n", mode=mode)
    return changes


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value
