"""`builder plan --write` against the .env files users really have (issue 29): every line form, CRLF and mixed
endings, duplicate keys, bytes that are not UTF-8, values that would split a line, a symlinked .env, non-regular
targets and a folder the user cannot write. Each refusal is one line and leaves the file as it was, and a real
`docker compose config` (compose-go's own .env parser) reads back the values the plan wrote. The compose calls are
few (about 0.3 s each): one file carries many cases."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import pytest
from support.builder import builder_in_process as builder
from support.builder import one_line_error
from support.stack import COMPOSE

from builder.core.errors import UserError
from builder.core.values import LINE_BREAKS
from builder.plan import envfile

# A plan whose settings are all LLAMACPP_* and MODEL: `--json` says which values it writes.
PLAN = ("plan", "r1-671b-ud-iq1_s", "--gpus", "4xRTX4090", "--ram", "384", "--cores", "64", "--cpu", "avx512")
NOBODY = 65534


def compose_reads(env_file: Path, keys: Iterable[str], folder: Path) -> dict[str, str]:
    """What `docker compose --env-file ENV_FILE config` makes of each key: a one-service file whose environment
    names each key (`unset` where the .env does not set it); nothing from this process's environment."""
    keys = list(keys)
    compose_file = folder / "compose-reads.yml"
    compose_file.write_text("services:\n  s:\n    image: busybox\n    environment:\n"
                            + "".join(f"      {k}: ${{{k}-unset}}\n" for k in keys))
    result = subprocess.run([COMPOSE, "--project-directory", str(folder), "-f", str(compose_file), "--env-file", str(env_file),
                             "config", "--format", "json"], env={"PATH": os.environ["PATH"], "HOME": str(folder)},
                            capture_output=True, text=True, check=True)
    environment = json.loads(result.stdout)["services"]["s"]["environment"]
    return {k: environment[k].replace("$$", "$") for k in keys}  # config prints a literal $ as $$


def planned_settings() -> dict[str, str]:
    return json.loads(builder(*PLAN, "--json", capture_output=True).stdout)["settings"]


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail instead of hanging: opening a FIFO for reading blocks until a writer comes, which would stall the suite."""
    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s: the FIFO was opened")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_each_line_keeps_its_form_and_compose_reads_the_plans_values(tmp_path):
    """Only the value of each updated line changes: its `export `, spacing, `:` form, quoting and comment stay, and
    so does each line's ending (CRLF or LF, per line). A value the old quoting cannot carry gets quotes that compose
    reads back exactly; an empty value before a comment is written '' (bare, compose would read the comment)."""
    env = tmp_path / ".env"
    env.write_bytes(b"# my stack\r\n"
                    b"export HF_TOKEN=hf_secret # mine\r\n"
                    b"A=old # why\r\n"
                    b"export B='old'\r\n"
                    b'C="old" # c\r\n'
                    b"D = old\r\n"
                    b"E=old # keep me\n"
                    b'F="multi\nline" # m\n'
                    b"G: old\n"
                    b"NOTE=caf\xe9\n"
                    b"H=1")
    env.chmod(0o600)  # a file with a token in it stays the user's alone
    values = {"A": "24,25", "B": "two words", "C": "it's $HOME \\ \"q\"", "D": "", "E": "", "F": "x", "G": "new", "H": "1",
              "I": "a#b", "J": "x'y\\"}
    changes = envfile.update(env, values)
    assert env.read_bytes() == (b"# my stack\r\n"
                                b"export HF_TOKEN=hf_secret # mine\r\n"
                                b"A=24,25 # why\r\n"
                                b"export B='two words'\r\n"
                                b'C="it\'s \\$HOME \\\\ \\"q\\"" # c\r\n'
                                b"D = \r\n"
                                b"E='' # keep me\n"
                                b'F="x" # m\n'
                                b"G: new\n"
                                b"NOTE=caf\xe9\n"
                                b"H=1\r\n"  # the last line gets the file's usual ending before the appended ones
                                b"# builder plan\r\n"
                                b"I='a#b'\r\n"
                                b'J="x\'y\\\\"\r\n')
    assert env.stat().st_mode & 0o777 == 0o600
    assert [c.key for c in changes] == ["A", "B", "C", "D", "E", "F", "G", "I", "J"]
    assert next(c for c in changes if c.key == "F").old == "multi\nline"
    read = compose_reads(env, [*values, "HF_TOKEN", "NOTE"], tmp_path)
    assert read == {**values, "HF_TOKEN": "hf_secret", "NOTE": "caf\ufffd"}
    assert envfile.update(env, values) == []  # read back as written: nothing left to change


def test_duplicate_keys_update_the_one_compose_uses_and_keep_the_others(tmp_path):
    """compose takes a key's last assignment (checked here on the original file, not assumed), so that line is
    updated; the earlier one is dead for compose and is left as the user wrote it."""
    env = tmp_path / ".env"
    env.write_bytes(b"MODEL=first\nLLAMACPP_THREADS=2\nMODEL=second # compose takes this one\n")
    assert compose_reads(env, ["MODEL"], tmp_path) == {"MODEL": "second"}
    envfile.update(env, {"MODEL": "r1-671b-ud-iq1_s", "LLAMACPP_THREADS": "64"})
    assert env.read_bytes() == b"MODEL=first\nLLAMACPP_THREADS=64\nMODEL=r1-671b-ud-iq1_s # compose takes this one\n"
    assert compose_reads(env, ["MODEL", "LLAMACPP_THREADS"], tmp_path) == {"MODEL": "r1-671b-ud-iq1_s", "LLAMACPP_THREADS": "64"}


def test_bytes_that_are_not_utf8_are_kept_where_the_plan_does_not_write(tmp_path):
    """A Latin-1 comment, a secret with a stray byte, and an earlier (dead) assignment of a planned key on an
    undecodable line: the CLI writes the plan, and every one of those bytes is still there."""
    settings = planned_settings()
    env = tmp_path / ".env"
    kept = b"# caf\xe9 au lait\nHF_TOKEN=hf_\xff\xfesecret\nLLAMACPP_THREADS=\xff1\n"
    env.write_bytes(kept + b"LLAMACPP_THREADS=2\r\nLLAMACPP_CTX_SIZE=4096\n")
    result = builder(*PLAN, "--write", str(env), capture_output=True)
    assert "LLAMACPP_THREADS=64 (was '2')" in result.stderr
    written = env.read_bytes()
    assert written.startswith(kept + b"LLAMACPP_THREADS=64\r\nLLAMACPP_CTX_SIZE=8192\n# builder plan\n")
    assert f"MODEL={settings['MODEL']}\n".encode() in written


def test_a_planned_key_on_a_line_that_is_not_utf8_is_refused_in_one_line(tmp_path):
    env = tmp_path / ".env"
    original = b"HF_TOKEN=hf_secret\nLLAMACPP_CTX_SIZE=4096 # caf\xe9\n"
    env.write_bytes(original)
    line = one_line_error(builder(*PLAN, "--write", str(env), check=False, capture_output=True))
    assert "line 2, which sets LLAMACPP_CTX_SIZE, is not UTF-8" in line
    assert env.read_bytes() == original and os.listdir(tmp_path) == [".env"]


@pytest.mark.parametrize("ch", sorted(LINE_BREAKS | {"\x00"}), ids=lambda ch: f"U+{ord(ch):04X}")
def test_a_value_that_would_split_a_line_is_refused_and_nothing_is_written(tmp_path, ch):
    """Every character some reader ends a line at, and NUL: a token cut in two would leave half of it in a line of
    its own (compose would read the rest as a key, or refuse the file)."""
    env = tmp_path / ".env"
    original = b"HF_TOKEN=old\r\nMODEL=x\n"
    env.write_bytes(original)
    with pytest.raises(UserError) as refused:
        envfile.update(env, {"MODEL": "r1", "HF_TOKEN": f"hf_a{ch}b"})
    message = str(refused.value)
    assert "the value of HF_TOKEN" in message and not any(c in message for c in LINE_BREAKS | {"\x00"})
    assert env.read_bytes() == original and os.listdir(tmp_path) == [".env"]


def test_a_symlinked_env_has_its_target_written_and_stays_a_link(tmp_path):
    """A .env kept elsewhere (a secrets folder) and linked into the stack: the target is rewritten in its own
    folder, the link is untouched, stderr says which file changed, and compose reads the plan through the link."""
    settings = planned_settings()
    secrets, stack = tmp_path / "secrets", tmp_path / "stack"
    secrets.mkdir()
    stack.mkdir()
    real = secrets / "r1.env"
    real.write_bytes(b"HF_TOKEN=hf_secret\r\nLLAMACPP_CTX_SIZE=4096\r\n")
    link = stack / ".env"
    link.symlink_to("../secrets/r1.env")
    result = builder(*PLAN, "--write", str(link), capture_output=True)
    assert f"{link} is a link: writing its target {real}" in result.stderr
    assert link.is_symlink() and os.readlink(link) == "../secrets/r1.env"
    assert os.listdir(stack) == [".env"] and os.listdir(secrets) == ["r1.env"]  # no temp file left in either folder
    assert real.read_bytes().startswith(b"HF_TOKEN=hf_secret\r\nLLAMACPP_CTX_SIZE=8192\r\n# builder plan\r\n")
    # An empty setting the file does not hold yet is not appended: compose reads it unset, as the stack's ${VAR:-}.
    expected = {k: v or "unset" for k, v in settings.items()}
    assert compose_reads(link, [*settings, "HF_TOKEN"], tmp_path) == {**expected, "HF_TOKEN": "hf_secret"}

    dangling = stack / "new.env"
    dangling.symlink_to("../secrets/new.env")  # a link made ahead of its file: the file is created where it points
    builder(*PLAN, "--write", str(dangling), capture_output=True)
    assert dangling.is_symlink() and (secrets / "new.env").read_text().startswith("# builder plan\n")


def fifo(folder: Path) -> Path:
    os.mkfifo(folder / ".env")
    return folder / ".env"


def fifo_behind_a_link(folder: Path) -> Path:
    os.mkfifo(folder / "pipe")
    (folder / ".env").symlink_to("pipe")
    return folder / ".env"


def unix_socket(folder: Path) -> Path:
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(folder / ".env"))
    return folder / ".env"


def folder_behind_a_link(folder: Path) -> Path:
    (folder / "stacks").mkdir()
    (folder / ".env").symlink_to("stacks")
    return folder / ".env"


def loop_of_links(folder: Path) -> Path:
    (folder / ".env").symlink_to("other")
    (folder / "other").symlink_to(".env")
    return folder / ".env"


@pytest.mark.parametrize("make,message", [
    (fifo, "not a regular file"), (fifo_behind_a_link, "not a regular file"), (unix_socket, "not a regular file"),
    (folder_behind_a_link, "is a (folder|directory)"), (loop_of_links, "a loop of links"),
])
def test_a_target_that_is_not_a_regular_file_is_refused_in_one_line(tmp_path, make, message):
    """Refused before the plan is worked out, and the node stays what it was (a FIFO is never opened: that would
    block; a link is never replaced by a file)."""
    path = make(tmp_path)
    before = {p.name: (p.is_symlink(), p.lstat().st_mode) for p in tmp_path.iterdir()}
    with deadline(20):
        line = one_line_error(builder(*PLAN, "--write", str(path), check=False, capture_output=True))
    assert re.search(message, line), line
    assert {p.name: (p.is_symlink(), p.lstat().st_mode) for p in tmp_path.iterdir()} == before


def as_nobody(args: tuple[str, ...]) -> tuple[int, str]:
    """`builder ARGS` run as uid/gid 65534 with no groups (what `setpriv --reuid 65534 --regid 65534 --clear-groups`
    does), in a forked child of this process: this interpreter may live where that user cannot read (/root), and
    the code is already imported. Root is refused nothing by the file system, so only a real unprivileged user
    shows what one meets. The exit status and stderr come back through a pipe."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 70
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            result = builder(*args, check=False, capture_output=True)
            os.write(write_end, json.dumps([result.returncode, result.stderr]).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert status == 0 and answer, "the child running as nobody failed"
    returncode, stderr = json.loads(answer)
    return returncode, stderr


def test_a_folder_the_user_cannot_write_is_refused_in_one_line(tmp_path):
    """The file itself is writable but its folder is not: a rename-into-place cannot happen there, and an
    unprivileged user is told so in one line, with the file as it was."""
    if os.geteuid() != 0:
        folder = tmp_path / "stack"
        run = lambda args: (lambda r: (r.returncode, r.stderr))(builder(*args, check=False, capture_output=True))  # noqa: E731
    else:
        folder = Path(tempfile.mkdtemp(prefix="r1kit-envfile-")) / "stack"  # pytest's tmp_path is root's alone (0700)
        folder.parent.chmod(0o755)
        run = as_nobody
    try:
        folder.mkdir()
        env = folder / ".env"
        original = b"HF_TOKEN=hf_secret\nLLAMACPP_CTX_SIZE=4096\n"
        env.write_bytes(original)
        env.chmod(0o666)
        folder.chmod(0o555)
        returncode, stderr = run((*PLAN, "--write", str(env)))
        lines = stderr.strip().splitlines()
        assert returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), stderr
        assert "is not writable by this user" in lines[0]
        assert env.read_bytes() == original and os.listdir(folder) == [".env"]
    finally:
        folder.chmod(0o755)
        if os.geteuid() == 0:
            shutil.rmtree(folder.parent)
