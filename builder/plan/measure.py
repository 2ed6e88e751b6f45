"""`builder plan --measure`: where the estimate is unsure, measure. llama-bench runs the plan's candidates and
llama.cpp's own fit (`-fitt`, the same fitting llama-server does when no -ngl is given) on this machine, and the
fastest is kept: tg128 first (one user's decode speed), pp512 among those within the fastest's spread. By
construction the choice is never slower than --fit beyond the run's noise.

Each candidate loads the model once (for R1 671B from the page cache: tens of seconds to minutes per candidate), so
the result is cached beside the model, keyed by the model file's identity and the hardware it ran on, and reused
until either changes.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from builder.core.errors import UserError, shown
from builder.core.paths import atomic_write
from builder.images import runtime
from builder.models.shapes import Shape, shards
from builder.plan.hardware import GIB, Machine
from builder.plan.planner import HYBRID_UBATCH, MARGIN, Plan, llamacpp_plan

REPS = 2
PROMPT, GENERATE = 512, 128
CACHE_VERSION = 2  # 2: ties only within the fastest's own spread; a version-1 choice is measured again
TIMEOUT = 3600  # seconds for one candidate: R1 671B loads from a cold disk in minutes, not hours
# The plan's settings that leave placement to llama.cpp's own fit when empty (what the fit candidate writes).
PLACEMENT = ("LLAMACPP_N_GPU_LAYERS", "LLAMACPP_N_CPU_MOE", "LLAMACPP_OVERRIDE_TENSOR", "LLAMACPP_SPLIT_MODE",
             "LLAMACPP_TENSOR_SPLIT", "LLAMACPP_UBATCH")


@dataclass(frozen=True)
class Result:
    name: str
    args: tuple[str, ...]  # llama-bench's arguments for this candidate, the model's left out
    pp512: float = 0.0
    pp512_sd: float = 0.0
    tg128: float = 0.0
    tg128_sd: float = 0.0
    error: str = ""

    @property
    def ran(self) -> bool:
        return not self.error


@dataclass(frozen=True)
class Candidate:
    name: str
    settings: Mapping[str, str]  # the stack's variables this candidate would write
    args: tuple[str, ...]


def bench_args(settings: Mapping[str, str]) -> tuple[str, ...]:
    """The settings as llama-bench's arguments: its -ngl takes a number, its -ts separates GPUs with '/' (',' sweeps
    values), its -ot separates patterns with ';' (the plan writes one pattern, so the value is the same)."""
    args = ["-fa", "1"]
    ngl = settings.get("LLAMACPP_N_GPU_LAYERS", "")
    if ngl:
        args += ["-ngl", "999" if ngl == "all" else ngl]
    for key, flag in (("LLAMACPP_N_CPU_MOE", "-ncmoe"), ("LLAMACPP_OVERRIDE_TENSOR", "-ot"), ("LLAMACPP_SPLIT_MODE", "-sm"),
                      ("LLAMACPP_THREADS", "-t"), ("LLAMACPP_UBATCH", "-ub"), ("LLAMACPP_NUMA", "--numa")):
        if settings.get(key):
            args += [flag, settings[key]]
    if settings.get("LLAMACPP_TENSOR_SPLIT"):
        args += ["-ts", settings["LLAMACPP_TENSOR_SPLIT"].replace(",", "/")]
    if not ngl:  # llama.cpp's own fit, with the margin the plan leaves
        args += ["-fitt", str(MARGIN // 2**20)]
    return tuple(args)


def candidates(plan: Plan, shape: Shape, machine: Machine) -> list[Candidate]:
    """The plan; the plan at the hybrid prompt micro-batch where experts stay in RAM (faster prompts, a little less
    room for experts); and llama.cpp's own fit (no -ngl: llama-server fits at start)."""
    out = [Candidate("plan", plan.settings, bench_args(plan.settings))]
    if plan.settings.get("LLAMACPP_OVERRIDE_TENSOR") or plan.settings.get("LLAMACPP_N_CPU_MOE"):
        hybrid = llamacpp_plan(plan.model, shape, machine, plan.context, ubatch=HYBRID_UBATCH).settings
        hybrid = {k: v for k, v in hybrid.items() if k in plan.settings}
        out.append(Candidate(f"plan -ub {HYBRID_UBATCH}", hybrid, bench_args(hybrid)))
    fit = {k: ("" if k in PLACEMENT else v) for k, v in plan.settings.items()}
    out.append(Candidate("llama.cpp fit", fit, bench_args(fit)))
    return out


def run_candidate(command: list[str], model: Path, candidate: Candidate) -> Result:
    """One llama-bench run (pp512 and tg128, REPS each); a candidate that fails to load or run is a result with its
    reason, not an error: the others still compete."""
    argv = [*command, "-m", str(model), *candidate.args, "-p", str(PROMPT), "-n", str(GENERATE), "-r", str(REPS), "-o", "json"]
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=err, timeout=TIMEOUT, check=False)
        except FileNotFoundError:
            raise UserError(f"--llama-bench {shown(shlex.join(command))}: {shown(command[0])} is not a command here; give "
                            "the path of llama-bench, or the image's entrypoint (docker run ... IMAGE llama-bench)") from None
        except subprocess.TimeoutExpired:
            return Result(candidate.name, candidate.args, error=f"no result in {TIMEOUT} s")
        err.seek(0)
        log = err.read().decode(errors="replace").splitlines()
    try:
        rows = json.loads(proc.stdout) if proc.returncode == 0 else []
        pp = next(r for r in rows if r["n_prompt"] and not r["n_gen"])
        tg = next(r for r in rows if r["n_gen"] and not r["n_prompt"])
    except (ValueError, StopIteration, KeyError, TypeError):
        why = next((line for line in reversed(log) if any(w in line.lower() for w in ("out of memory", "error", "failed"))),
                   log[-1] if log else f"exit {proc.returncode}")
        return Result(candidate.name, candidate.args, error=shown(why.strip(), 200))
    return Result(candidate.name, candidate.args, float(pp["avg_ts"]), float(pp["stddev_ts"]), float(tg["avg_ts"]), float(tg["stddev_ts"]))


def fastest(results: list[Result]) -> Result | None:
    """tg128 first; the candidates within the fastest's spread (its standard deviation, at least 1%) tie, and among
    them pp512 decides. A candidate's own spread buys it no tie: on an H100 llama.cpp's fit decoded 199 ± 49 beside
    the plan at -ub 2048's 247 ± 8, and counting its 49 let its prompt speed pick the slowest decoder of three."""
    ran = [r for r in results if r.ran]
    if not ran:
        return None
    best = max(ran, key=lambda r: r.tg128)
    ties = [r for r in ran if best.tg128 - r.tg128 <= max(best.tg128_sd, 0.01 * best.tg128)]
    return max(ties, key=lambda r: (r.pp512, r.tg128))


def identity(model: Path, machine: Machine, context: int) -> dict[str, Any]:
    """What a cached result is valid for: the model's files (name, size, modification time) and the hardware the
    candidates ran on (each GPU's name and free memory in whole GiB, cores, NUMA nodes, CPU level)."""
    files = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in shards(model)]
    return {
        "version": CACHE_VERSION,
        "model": hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16],
        "gpus": [[g.name, int(g.memory // GIB)] for g in machine.gpus],
        "cores": machine.cores, "numa": machine.numa_nodes, "cpu": machine.cpu_level, "context": context,
    }


def cache_file(model: Path) -> Path:
    """Beside the model (its first shard): `.NAME.r1kit-measure.json`."""
    return shards(model)[0].with_name(f".{shards(model)[0].name}.r1kit-measure.json")


def _read_cache(path: Path) -> list[dict[str, Any]]:
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return []  # none yet, or unreadable: measured again and rewritten
    return entries if isinstance(entries, list) else []


@dataclass(frozen=True)
class Measured:
    plan: Plan
    results: tuple[Result, ...]
    chosen: str
    cached: bool
    cache: Path
    cache_note: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "cached": self.cached, "cache": str(self.cache),
                "measured": [asdict(r) for r in self.results]}


def measure(plan: Plan, shape: Shape, machine: Machine, model: Path, command: list[str], say: Any = print) -> Measured:
    """The plan's candidates and llama.cpp's fit, measured (or the cached measurement of this model on this
    hardware), and the plan with the fastest one's settings."""
    key = identity(model, machine, plan.context)
    path = cache_file(model)
    entries = _read_cache(path)
    for entry in entries:
        if entry.get("key") == key:
            results = tuple(Result(**{**r, "args": tuple(r["args"])}) for r in entry["measured"])
            return Measured(_chosen(plan, entry["chosen"], entry["settings"], results), results, entry["chosen"], True, path)
    found = candidates(plan, shape, machine)
    results = []
    for c in found:
        say(f"measuring {c.name}: llama-bench {shlex.join(c.args)}")
        results.append(run_candidate(command, model, c))
        r = results[-1]
        say(f"  {c.name}: " + (f"tg128 {r.tg128:.1f} ± {r.tg128_sd:.1f}, pp512 {r.pp512:.0f} ± {r.pp512_sd:.0f} tokens/s" if r.ran else f"failed: {r.error}"))
    best = fastest(results)
    if best is None:
        raise UserError(f"no candidate ran: {'; '.join(f'{r.name}: {r.error}' for r in results)}; check the --llama-bench command with the model by hand")
    settings = next(c.settings for c in found if c.name == best.name)
    note = ""
    try:
        atomic_write(path, json.dumps([*[e for e in entries if e.get("key") != key],
                                       {"key": key, "chosen": best.name, "settings": dict(settings),
                                        "measured": [asdict(r) for r in results]}], indent=1) + "\n")
    except OSError as e:
        note = f"the measurement is not cached: {path.parent} is not writable ({e.strerror})"
    return Measured(_chosen(plan, best.name, settings, tuple(results)), tuple(results), best.name, False, path, note)


def _chosen(plan: Plan, name: str, settings: Mapping[str, str], results: tuple[Result, ...]) -> Plan:
    """The plan with the measured choice's settings, and why lines that give every candidate's numbers."""
    lines = [f"measured ({REPS} runs each, llama-bench pp{PROMPT}/tg{GENERATE}): " + "; ".join(
        f"{r.name}: tg{GENERATE} {r.tg128:.1f} ± {r.tg128_sd:.1f}, pp{PROMPT} {r.pp512:.0f} ± {r.pp512_sd:.0f}" if r.ran
        else f"{r.name}: failed ({r.error})" for r in results)]
    lines.append(f"chose {name}: the fastest decode (tg{GENERATE}); within its spread, the fastest prompts (pp{PROMPT})"
                 + ("; llama-server fits the model to the GPUs itself at start (no -ngl)" if name == "llama.cpp fit" else ""))
    return replace(plan, settings=dict(settings), flags=runtime.load("llamacpp").flags(settings),
                   reasons=plan.reasons + tuple(lines))
