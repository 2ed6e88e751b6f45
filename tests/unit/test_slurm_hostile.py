"""`builder slurm` given hostile values (issue 29): every string option, with the hostile set, either refused (exit
2, one `error:` line, nothing written, nothing submitted) or rendered into a script that bash parses (`bash -n`),
that keeps every `#SBATCH` line where sbatch reads it, and that, run by bash against stand-in `srun`, `sbatch`,
`ray`, `docker`, `vllm` ... (which record their arguments and exit 0), runs nothing that was not meant to: no marker
file appears. The module's own check (slurm.render) is tested apart from the command line's check of every word,
so that either alone keeps the script whole.

The product is sampled: every option with every hostile value under the launcher that renders the option, and every
launcher with the issue's reproducer. The `-o` rules (core.paths.output_file) are here too.
"""

from __future__ import annotations

import functools
import os
import re
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from support.builder import builder_in_process, one_line_error

import builder.models.catalog
from builder.cluster import slurm
from builder.cluster.commands import slurm_command
from builder.core.errors import UserError
from builder.core.values import LINE_BREAKS, unsafe_character

MARKER = "r1kit-pwned"
PRESET = "2x4-h200"
# The hostile set: each line break bash or str.splitlines() knows, other control characters, the shell's own
# syntax, quotes, a value far longer than any path, and the issue's reproducer (its /tmp/pwned made the marker).
HOSTILE: dict[str, str] = {
    **{f"break-{ord(ch):#06x}": f"x{ch}touch {MARKER} #" for ch in sorted(LINE_BREAKS)},
    "trailing-newline": "0.0.0.0\n",  # the issue's --host that passed a `$` anchor
    "nul": f"x\x00touch {MARKER}",
    "escape": "x\x1b[2Jx",
    "delete": "x\x7fx",
    "c1-csi": "x\x9b2Jx",
    "tab": f"x\ttouch {MARKER}",
    "command-substitution": f"$(touch {MARKER})",
    "backticks": f"`touch {MARKER}`",
    "semicolon": f"; touch {MARKER} #",
    "and": f"x && touch {MARKER}",
    "variable": f"${{IFS}}touch${{IFS}}{MARKER}",
    "quotes": f"'\"; touch {MARKER}; '\"",
    "single-quote-escape": f"x'; touch {MARKER}; '",
    "sbatch-directive": "x #SBATCH --uid=0",
    "glob": "*",
    "dash": "-x",
    "100kB": "x" * 100_000,
    "reproducer": f"/etc/r1/key\rtouch {MARKER} #",
}
STAND_INS = ("srun", "sbatch", "sbcast", "scancel", "ray", "docker", "vllm", "apptainer", "singularity", "enroot", "builder",
             "r1kit-cluster", "python", "python3")
# How sbatch reads a directive: `#SBATCH --name[=value]` before the first command; every one this script writes.
DIRECTIVE = re.compile(r"#SBATCH --[a-z-]+(=[A-Za-z0-9_.+:%-]+)?")


@dataclass(frozen=True)
class Option:
    """A string option of `builder slurm` and what it needs to reach the script at all."""

    flag: str  # the option; "PRESET" the argument, "--" vllm serve's own arguments
    launcher: str = "pyxis"  # the launcher whose script carries the value
    needs: tuple[str, ...] = ()  # further options without which the value is not rendered
    path: bool = False  # an absolute path: a payload gets a /data/ prefix, so that its hostile part is what is tested
    field: str | None = None  # the slurm.Job field, for the module's own check
    benign: str | None = None  # a value it is known to take: the script to compare a hostile one's with

    def value(self, payload: str) -> str:
        return payload if not self.path or payload.startswith("/") else f"/data/{payload}"

    def args(self, payload: str, out: Path | None) -> list[str]:
        """`builder slurm`'s arguments with the payload in this option; `-o out`, or --dry-run for out=None."""
        value = self.value(payload)
        write = ["-o", str(out)] if out is not None else ["--dry-run"]
        if self.flag == "PRESET":
            return [value, "--launcher", self.launcher, *write]
        if self.flag == "-o":
            return [PRESET, "--launcher", self.launcher, *(["-o", str(out.parent / value)] if out is not None else write)]
        if self.flag == "--":
            return [PRESET, "--launcher", self.launcher, *write, "--", "--override-generation-config", value]
        return [PRESET, "--launcher", self.launcher, *self.needs, self.flag, value, *write]


OPTIONS = [
    Option("PRESET", benign=PRESET),
    Option("-o", benign="job.sbatch"),
    Option("--", field="extra_args", benign="{}"),
    Option("--arch", field="arch", benign="x86_64"),
    Option("--launcher", field="launcher", benign="pyxis"),
    Option("--gpu-request", field="gpu_request", benign="gres"),
    Option("--model", field="model", benign="r1-671b-fp8"),
    Option("--image", field="image", benign="registry.example/vllm:1"),
    Option("--model-init-image", needs=("--download",), field="model_init_image", benign="registry.example/model-init:1"),
    Option("--models-dir", launcher="bare", path=True, field="models_dir", benign="/data/models"),
    Option("--partition", field="partition", benign="gpu"),
    Option("--account", field="account", benign="proj-1"),
    Option("--time", field="time", benign="1:00:00"),
    Option("--job-name", field="job_name", benign="job"),
    Option("--host", needs=("--api-key-file", "/etc/r1kit/key"), field="host", benign="0.0.0.0"),
    Option("--served-model-name", field="served_model_name", benign="r1"),
    Option("--api-key-file", needs=("--host", "0.0.0.0"), path=True, field="api_key_file", benign="/etc/r1kit/key"),
    Option("--ifname", field="ifname", benign="ib0"),
    Option("--venv", launcher="bare", path=True, field="venv", benign="/sw/vllm"),
    Option("--r1kit-home", launcher="bare", path=True, field="r1kit_home", benign="/sw/r1kit"),
]


def test_every_string_option_of_the_command_is_covered():
    params = slurm_command.params
    free_text = {p.opts[0] for p in params if isinstance(p, click.Option) and not p.is_flag and p.type.name in ("text", "path", "file", "choice")}
    assert free_text == {o.flag for o in OPTIONS} - {"PRESET", "--"}, "a new string option needs its Option here"
    assert [p.name for p in params if isinstance(p, click.Argument)] == ["preset", "vllm_args"]


def job_fields(needs: tuple[str, ...]) -> dict[str, object]:
    """An Option's `needs` as slurm.Job fields."""
    out: dict[str, object] = {}
    rest = list(needs)
    while rest:
        name = rest.pop(0).lstrip("-").replace("-", "_")
        out[name] = True if name == "download" else rest.pop(0)
    return out


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of stand-ins: each records its name and arguments (one file per call: calls run in parallel) and
    exits 0; scontrol also lists $STANDIN_NODES host names, as `scontrol show hostnames` would."""
    folder = tmp_path_factory.mktemp("stand-ins")
    record = '#!/bin/bash\nprintf "%s\\0" "${0##*/}" "$@" > "$(mktemp "$STANDIN_LOG/call.XXXXXX")"\n'
    for name in STAND_INS:
        (folder / name).write_text(record + "exit 0\n")
    (folder / "scontrol").write_text(record + 'if [[ $1 == show && $2 == hostnames ]]; then\n'
                                              '    for ((i = 1; i <= STANDIN_NODES; i++)); do echo "node$i"; done\nfi\n')
    for path in folder.iterdir():
        path.chmod(0o755)
    return folder


def calls(log: Path) -> list[list[str]]:
    """Each stand-in call: its name, then its arguments. The script stops the workers' srun once the head's ends,
    which can kill that stand-in before it writes: an empty record is such a call."""
    records = (f.read_bytes().decode().split("\0")[:-1] for f in sorted(log.iterdir()))
    return [r for r in records if r]


def directives(script: str) -> list[str]:
    """The #SBATCH lines sbatch obeys: those before the script's first command."""
    out = []
    for line in script.split("\n"):
        if line.startswith("#SBATCH"):
            out.append(line)
        elif line.strip() and not line.startswith("#"):
            break
    return out


@functools.lru_cache(maxsize=None)
def directive_names(option: Option) -> frozenset[str]:
    """The #SBATCH options of the script with the option's benign value."""
    assert option.benign is not None
    text = builder_in_process("slurm", *option.args(option.benign, None), capture_output=True).stdout
    return frozenset(line.split("=")[0] for line in directives(text))


def run_script(script: Path, stand_ins: Path, work: Path) -> list[list[str]]:
    """Run the script as sbatch would on the head node, with the stand-ins on PATH; the calls they saw."""
    text = script.read_text()
    nodes = re.search(r"^NODES=([0-9]+)$", text, re.MULTILINE)
    assert nodes, "the script sets no NODES"
    log = work / "calls"
    log.mkdir()
    env = {"PATH": f"{stand_ins}:/usr/bin:/bin", "HOME": str(work), "SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "node[1-9]",
           "STANDIN_NODES": nodes.group(1), "STANDIN_LOG": str(log), "TMPDIR": str(work)}
    done = subprocess.run(["bash", str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return calls(log)


def assert_whole(script: Path, option: Option) -> None:
    """bash parses the script; it holds no control character but newlines (and tabs); every #SBATCH line is one
    sbatch reads, and they are those of the script with the option's benign value."""
    text = script.read_text()
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    assert all(unsafe_character(line, allow_tab=True) is None for line in text.split("\n"))
    every = [line for line in text.split("\n") if line.lstrip().startswith("#SBATCH")]
    assert directives(text) == every, "an #SBATCH line after the first command: sbatch would ignore it"
    assert all(DIRECTIVE.fullmatch(line) for line in every), every
    assert {line.split("=")[0] for line in every} == directive_names(option)


def assert_nothing_ran(work: Path, made: list[list[str]]) -> None:
    assert not list(work.rglob(MARKER)), "the script ran an injected command"
    assert {c[0] for c in made} <= {"srun", "sbcast", "scontrol"}, made


def refused(done: subprocess.CompletedProcess, work: Path, before: set[Path]) -> str:
    line = one_line_error(done)
    assert set(work.rglob("*")) == before, "a refused job wrote a file"
    return line


CASES = [(o, name) for o in OPTIONS for name in HOSTILE]


@pytest.mark.parametrize(("option", "name"), CASES, ids=[f"{o.flag.strip('-') or 'vllm-args'}-{n}" for o, n in CASES])
def test_a_hostile_value_is_refused_in_one_line_or_quoted_so_that_nothing_runs(option: Option, name: str, tmp_path: Path,
                                                                                stand_ins: Path):
    payload = HOSTILE[name]
    out = tmp_path / "job.sbatch"
    done = builder_in_process("slurm", *option.args(payload, out), check=False, capture_output=True, cwd=tmp_path)
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    if done.returncode:
        refused(done, tmp_path, set())
        return
    assert done.stderr.count("\n") == 1 and not done.stdout, done.stderr  # the path written, nothing else
    script = out if option.flag != "-o" else out.parent / option.value(payload)
    assert_whole(script, option)
    assert_nothing_ran(tmp_path, run_script(script, stand_ins, tmp_path))


VALUE_FIELDS = [o for o in OPTIONS if o.field]
UNSAFE = [name for name, value in HOSTILE.items() if unsafe_character(value)]


@pytest.mark.parametrize("option", VALUE_FIELDS, ids=[o.field for o in VALUE_FIELDS])
def test_the_module_refuses_control_characters_without_the_command_lines_check(option: Option):
    """slurm.render refuses them itself: another caller (or a change to the CLI's check of every word) cannot let
    one into a script."""
    presets, catalog = slurm.load_presets(), builder.models.catalog.load()
    base = {"launcher": option.launcher, **job_fields(option.needs)}
    for name in UNSAFE:
        value = option.value(HOSTILE[name])
        job = slurm.job(presets.get(PRESET), {**base, option.field: (value,) if option.field == "extra_args" else value})
        with pytest.raises(UserError) as refusal:
            slurm.render(job, presets, catalog)
        message = str(refusal.value)
        assert unsafe_character(message) is None and len(message) < 400, (name, message)


@pytest.mark.parametrize("launcher", slurm.LAUNCHERS)
def test_the_issues_reproducer_is_refused_with_every_launcher(launcher: str, tmp_path: Path, stand_ins: Path):
    """`--api-key-file $'/etc/r1/key\\rtouch /tmp/pwned #'` wrote a script that ran `touch` (issue 29), and so did
    --models-dir under --launcher bare; both are refused, written (-o) or submitted (sbatch)."""
    log = tmp_path / "submitted"
    log.mkdir()
    env = {**os.environ, "PATH": f"{stand_ins}:{os.environ['PATH']}", "STANDIN_LOG": str(log)}
    for option in ("--api-key-file", "--models-dir"):
        args = [PRESET, "--launcher", launcher, "--host", "0.0.0.0", "--api-key-file", "/etc/r1/key", option, HOSTILE["reproducer"]]
        before = set(tmp_path.rglob("*"))
        refused(builder_in_process("slurm", *args, "-o", str(tmp_path / "job.sbatch"), check=False, capture_output=True,
                                   cwd=tmp_path, env=env), tmp_path, before)
        refused(builder_in_process("slurm", *args, check=False, capture_output=True, cwd=tmp_path, env=env), tmp_path, before)
        assert calls(log) == [], "a refused job was submitted"
        job = slurm.job(slurm.load_presets().get(PRESET), {"launcher": launcher, "host": "0.0.0.0", "api_key_file": "/etc/r1/key",
                                                          option.lstrip("-").replace("-", "_"): HOSTILE["reproducer"]})
        with pytest.raises(UserError, match="control character"):
            slurm.render(job)


@pytest.mark.parametrize("launcher", slurm.LAUNCHERS)
def test_the_reproducer_on_one_line_is_quoted_with_every_launcher(launcher: str, tmp_path: Path, stand_ins: Path):
    """The same attack without the carriage return is a legal path: quoted wherever it lands, in the script, its
    comments and the mounts, and handed to the steps as one argument."""
    key = f"/etc/r1/key; touch {MARKER} #"
    models = f"/data/$(touch {MARKER})"
    out = tmp_path / "job.sbatch"
    args = ["--launcher", launcher, "--host", "0.0.0.0", "--api-key-file", key, "--models-dir", models]
    builder_in_process("slurm", PRESET, *args, "-o", str(out), capture_output=True, cwd=tmp_path)
    assert_whole(out, Option("--models-dir", launcher=launcher, needs=("--host", "0.0.0.0", "--api-key-file", "/etc/key"),
                             benign="/data/models"))
    made = run_script(out, stand_ins, tmp_path)
    assert_nothing_ran(tmp_path, made)
    head = next(c for c in made if c[0] == "srun" and "head" in c)
    if launcher == "bare":
        assert f"{models}/r1-0528-fp8" in head  # the (default) model's folder in serve_args, one argument
    else:
        assert any(a.endswith(f"{key}:{slurm.API_KEY_IN_CONTAINER}:ro") for a in head), head


# -o: core.paths.output_file's rules, and the file written.

def slurm_o(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return builder_in_process("slurm", PRESET, *args, check=False, capture_output=True, cwd=cwd)


def test_o_creates_missing_folders_or_refuses_in_one_line(tmp_path: Path):
    done = slurm_o("-o", "nope/x.sbatch", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "nope" / "x.sbatch").read_text().startswith("#!/bin/bash\n")
    (tmp_path / "file").write_text("mine\n")
    assert "file is not a folder" in one_line_error(slurm_o("-o", "file/x.sbatch", cwd=tmp_path))
    assert (tmp_path / "file").read_text() == "mine\n"
    assert "File name too long" in one_line_error(slurm_o("-o", "x" * 300, cwd=tmp_path))  # NAME_MAX is 255


@pytest.mark.parametrize("force", [[], ["--force"]], ids=["", "force"])
def test_o_refuses_devices_fifos_and_folders_even_with_force(tmp_path: Path, force: list[str]):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert "not a regular file" in one_line_error(slurm_o("-o", str(fifo), *force, cwd=tmp_path))
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert "not a regular file" in one_line_error(slurm_o("-o", "/dev/null", *force, cwd=tmp_path))
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)
    (tmp_path / "folder").mkdir()
    one_line_error(slurm_o("-o", str(tmp_path / "folder"), *force, cwd=tmp_path))
    link = tmp_path / "to-null"
    link.symlink_to("/dev/null")
    assert "not a regular file" in one_line_error(slurm_o("-o", str(link), *force, cwd=tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "folder", "to-null"]


def test_o_follows_a_symlink_says_so_and_needs_force_for_a_dangling_one(tmp_path: Path):
    dangling = tmp_path / "job.sbatch"
    dangling.symlink_to(tmp_path / "scripts" / "real.sbatch")
    assert "exists: give --force" in one_line_error(slurm_o("-o", str(dangling), cwd=tmp_path))
    assert not (tmp_path / "scripts").exists()
    done = slurm_o("-o", str(dangling), "--force", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert dangling.is_symlink() and (tmp_path / "scripts" / "real.sbatch").read_text().startswith("#!/bin/bash\n")
    assert done.stderr == f"{dangling}: a symlink, wrote its target {tmp_path / 'scripts' / 'real.sbatch'}\n"
    assert "exists: give --force" in one_line_error(slurm_o("-o", str(dangling), cwd=tmp_path))
