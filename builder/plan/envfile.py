"""`builder plan --write`: set variables in a compose `.env` file and lose nothing of the user's: every line the plan
does not own stays byte for byte (secrets, comments, order, line endings, bytes that are not UTF-8), and a line it
updates keeps its form (`export `, quoting, inline comment, CRLF). The file is read the way docker compose reads it
(compose-go's dotenv parser), so the line updated is the one compose takes."""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from builder.core.errors import UserError, shown
from builder.core.paths import atomic_write, output_file
from builder.core.values import plain

KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# compose-go's isSpace: the blanks it skips around keys and values, none of which ends a statement (only \n does).
BLANK = frozenset("\t\v\f\r \x85\xa0")
EXPORT = re.compile(r"export\s+")
# Key characters compose accepts besides letters and digits; anything else makes `docker compose` refuse the file.
KEY_PUNCTUATION = frozenset("_.-[]")
# A value written without quotes only where no reader (compose, a shell's `source`) could take it differently:
# everything the plan writes (numbers, `all`, `24,25,25,25`, model names and paths) is of this form.
BARE = re.compile(r"[A-Za-z0-9_./:,=@%+-]*")
NOT_UTF8 = re.compile("[\udc80-\udcff]")  # the bytes surrogateescape could not decode


@dataclass(frozen=True)
class Assignment:
    """One `KEY=value` statement as compose parses it; offsets into the file's text."""

    key: str
    start: int  # the statement's first character (its `export `, if any)
    value_start: int  # the value as written, quotes included
    value_end: int
    quote: str  # "", "'" or '"'


@dataclass(frozen=True)
class Change:
    key: str
    old: str | None  # None: the key was not in the file
    new: str


def update(path: Path, values: Mapping[str, str]) -> list[Change]:
    """Write `values` into the env file at `path` (created if missing; a link's target) and return what changed.
    Each key's last assignment (the one compose uses) is updated in place; keys not in the file are appended. The
    file is replaced in one rename, so a refusal or an interrupted write leaves it as it was."""
    for key, value in values.items():
        if not KEY.fullmatch(key):
            raise UserError(f"--write {path}: {shown(key)} is not a variable name")
        plain(value, f"--write {path}: the value of {key}")
    target = output_file(path, "--write", overwrite=True)
    original = _read(target)
    # surrogateescape: a byte that is not UTF-8 becomes a lone surrogate and is written back as the same byte.
    text = original.decode("utf-8", "surrogateescape")
    # compose takes a key's last assignment, so that is the one updated. The earlier ones are left as they are, not
    # commented out: they are dead for compose and for a shell's `source` alike, and they are the user's lines (an
    # old value kept on purpose, a note) that a plan has no business editing.
    last = {a.key: a for a in assignments(text) if a.key in values}
    changes: list[Change] = []
    edits: list[tuple[Assignment, str]] = []
    for key, a in last.items():
        old_raw = text[a.value_start:a.value_end]
        old = _value_of(old_raw, a.quote)
        if old == values[key]:
            continue
        _check_decodable(text, a, path)
        edits.append((a, _written(values[key], a.quote, _comment_follows(text, a))))
        changes.append(Change(key, old if old is not None else old_raw, values[key]))
    text = _apply(text, edits)
    missing = [k for k in values if k not in last and values[k] != ""]
    if missing:
        text = _append(text, [f"{k}={_written(values[k], '', False)}" for k in missing])
        changes += [Change(k, None, values[k]) for k in missing]
    if changes:
        _write(target, text.encode("utf-8", "surrogateescape"))
    return changes


def read_values(path: Path) -> dict[str, str]:
    """Each key's value in the env file as compose reads it (its last assignment); a key whose value depends on
    interpolation or an escape is left out. A missing or unreadable file has none."""
    try:
        text = path.read_bytes().decode("utf-8", "surrogateescape")
    except OSError:
        return {}
    values = {a.key: _value_of(text[a.value_start:a.value_end], a.quote) for a in assignments(text)}
    return {k: v for k, v in values.items() if v is not None}


def assignments(text: str) -> list[Assignment]:
    """The assignments of an env file in order, found as compose-go's dotenv parser finds them: a statement starts at
    any non-blank character (so `A="x" B=2` is two), a quoted value may span lines, `#` starts a comment only where a
    statement would start or after ` ` in an unquoted value. A statement compose would refuse (a bad key, an
    unterminated quote) is skipped to its line's end: it is kept as it is, and compose reports it."""
    found: list[Assignment] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return found
        if text[pos] == "#":
            pos = _line_end(text, pos)
            continue
        assignment, pos = _statement(text, pos)
        if assignment is not None:
            found.append(assignment)


def _statement(text: str, start: int) -> tuple[Assignment | None, int]:
    """The assignment starting at `start` (None where there is none) and where the next statement may start."""
    pos = start + len("export") if EXPORT.match(text, start) else start
    while pos < len(text) and text[pos] in BLANK:
        pos += 1
    key_start = pos
    while pos < len(text) and text[pos] not in "=:\n":
        if not (text[pos] in BLANK or text[pos] in KEY_PUNCTUATION or text[pos].isalnum()):
            return None, _line_end(text, pos)
        pos += 1
    key = text[key_start:pos].rstrip()
    if pos >= len(text) or text[pos] == "\n" or not key or any(ch in BLANK for ch in key):
        return None, _line_end(text, pos)  # `KEY` alone takes the caller's environment: not a value in the file
    pos += 1
    while pos < len(text) and text[pos] in BLANK:
        pos += 1
    if pos < len(text) and text[pos] in "'\"":
        end = _closing_quote(text, pos)
        if end is None:
            return None, _line_end(text, pos)
        return Assignment(key, start, pos, end + 1, text[pos]), end + 1
    line_end = _line_end(text, pos)
    value = text[pos:line_end].split(" #", 1)[0].rstrip()
    return Assignment(key, start, pos, pos + len(value), ""), line_end


def _closing_quote(text: str, opening: int) -> int | None:
    """The index of the quote that closes the one at `opening`: compose skips a quote after a backslash."""
    quote, escaped = text[opening], False
    for i in range(opening + 1, len(text)):
        if text[i] == quote and not escaped:
            return i
        escaped = text[i] == "\\" and not escaped
    return None


def _line_end(text: str, pos: int) -> int:
    end = text.find("\n", pos)
    return len(text) if end < 0 else end


def _value_of(raw: str, quote: str) -> str | None:
    """The value compose reads from `raw` (as written, quotes included), or None where it depends on more than the
    text (a `$` that compose interpolates, an escape sequence): the plan then writes its own value anyway."""
    if quote == "'":
        return re.sub(r"\\(.)", lambda m: "'" if m[1] == "'" else m[0], raw[1:-1], flags=re.S)
    if quote == "":
        return None if "$" in raw else raw
    value = []
    for m in re.finditer(r"\\(.)|\$\$|\$|[^\\$]+", raw[1:-1], flags=re.S):
        if m[1] is not None:
            if m[1] not in "\\\"$":
                return None
            value.append(m[1])
        elif m[0] == "$$":
            value.append("$")
        elif m[0] == "$":
            return None
        else:
            value.append(m[0])
    return "".join(value)


def _written(value: str, quote: str, comment_follows: bool) -> str:
    """`value` as it goes after `KEY=`, in the quoting the line had where that reads back as exactly `value`."""
    bare = BARE.fullmatch(value) is not None and not (value == "" and comment_follows)  # `K= # c` reads "# c"
    single = "'" not in value and not value.endswith("\\")  # compose takes \' as a quote inside '...'
    if quote == "" and bare:
        return value
    if quote != '"' and single:
        return f"'{value}'"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def _comment_follows(text: str, a: Assignment) -> bool:
    return text[a.value_end:_line_end(text, a.value_end)].strip() != ""


def _check_decodable(text: str, a: Assignment, path: Path) -> None:
    """Refuse to rewrite a statement holding bytes that are not UTF-8: what the user meant by them (Latin-1? a
    corrupted secret?) is not ours to guess, and the rest of the file is kept byte for byte anyway."""
    first = text.rfind("\n", 0, a.start) + 1
    if NOT_UTF8.search(text, first, _line_end(text, a.value_end)):
        line = text.count("\n", 0, a.start) + 1
        raise UserError(f"--write {path}: line {line}, which sets {a.key}, is not UTF-8 text: fix or remove that line, then run again")


def _apply(text: str, edits: list[tuple[Assignment, str]]) -> str:
    """`text` with each assignment's value replaced; everything around it (prefix, comment, line ending) kept."""
    for a, value in sorted(edits, key=lambda edit: edit[0].value_start, reverse=True):
        text = text[:a.value_start] + value + text[a.value_end:]
    return text


def _append(text: str, lines: list[str]) -> str:
    """`lines` after a `# builder plan` line at the end, each ending as most of the file's lines do (CRLF in a CRLF
    file); a last line without an ending gets one first."""
    ending = _usual_ending(text)
    if text and not text.endswith("\n"):
        text += ending
    return text + "".join(line + ending for line in ["# builder plan", *lines])


def _usual_ending(text: str) -> str:
    endings = Counter("\r\n" if line.endswith("\r") else "\n" for line in text.split("\n")[:-1])
    return "\r\n" if endings["\r\n"] > endings["\n"] else "\n"


def _read(target: Path) -> bytes:
    if not target.exists():
        return b""
    try:
        return target.read_bytes()
    except OSError as e:
        raise UserError(f"--write {target}: cannot read it ({e.strerror})") from None


def _write(target: Path, content: bytes) -> None:
    """Replace `target` in one rename, with its mode and (where we may) its owner: root running the plan on a
    user's file must not leave it root's."""
    st = target.stat() if target.exists() else None

    def write(tmp: Path) -> None:
        tmp.write_bytes(content)
        if st is not None:
            try:
                os.chown(tmp, st.st_uid, st.st_gid)
            except PermissionError:
                pass  # not root: the file becomes ours, as any editor's save would make it

    try:
        atomic_write(target, write, mode=st.st_mode & 0o777 if st else 0o644)
    except OSError as e:
        raise UserError(f"--write {target}: cannot write it ({e.strerror}); it is as it was") from None
