#!/usr/bin/env python3
"""Check, by disassembly, that every `ldtilecfg` in the given binaries loads a real AMX tile configuration.

An AMX kernel configures its tiles with `ldtilecfg MEM`, a 64-byte block: palette_id (byte 0), colsb[16] (bytes
16-47, uint16) and rows[16] (bytes 48-63). GCC 12's `_tile_loadconfig` tells the compiler that the instruction
reads 8 bytes, so stores of colsb[] and rows[] to a stack copy are dead to it and get dropped: every tile is then
configured with zero rows and the first `tileloadd` dies with SIGILL, on AMX hosts only. No AMX hardware is needed
to see it: this reads the configuration each `ldtilecfg` loads.

- rip-relative operand (a constant in read-only data): its 64 bytes are read from the file and must have
  palette 1 and at least one tile with rows and colsb both set;
- any other memory operand (a stack copy): the instructions before it in the same function must store something
  other than zero into both the colsb and rows ranges of that copy, relative to the same base register.

Needs binutils' objdump (x86_64). usage: amx_tile_check.py LIB... ; exit 1 naming each bad `ldtilecfg`,
0 otherwise (a binary with no `ldtilecfg` passes). Run by build.sh on every CPU variant it installs.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass

FUNCTION = re.compile(r"^[0-9a-f]+ <(?P<name>[^>]+)>:$")
INSTRUCTION = re.compile(r"^\s*(?P<addr>[0-9a-f]+):\s+(?P<mnemonic>\S+)\s*(?P<operands>[^#]*?)\s*(?:#\s*(?P<comment>.*))?$")
RIP_TARGET = re.compile(r"^(?P<target>[0-9a-f]+)\b")
MEMORY = re.compile(r"^(?P<disp>-?(?:0x[0-9a-f]+|\d+))?\((?P<base>%\w+)(?P<rest>[^)]*)\)$")
ZERO_IDIOM = re.compile(r"^v?(?:p?xor(?:p[sd])?|pxor[dq]?)$")
REG_BYTES = {"b": 1, "w": 2, "l": 4, "q": 8}
COLSB = range(16, 48)
ROWS = range(48, 64)


@dataclass(frozen=True)
class Finding:
    library: str
    function: str
    address: str
    problem: str

    def __str__(self) -> str:
        return f"{self.library}: ldtilecfg at 0x{self.address} in {self.function}: {self.problem}"


def register_family(reg: str) -> str:
    """%xmm3, %ymm3 and %zmm3 are one register; %al, %ax, %eax and %rax too."""
    reg = reg.lstrip("%")
    if m := re.fullmatch(r"[xyz]mm(\d+)", reg):
        return f"v{m.group(1)}"
    if m := re.fullmatch(r"r(\d+)[dwb]?", reg):
        return f"r{m.group(1)}"
    return {"al": "ax", "ah": "ax", "eax": "ax", "rax": "ax", "bl": "bx", "ebx": "bx", "rbx": "bx", "cl": "cx",
            "ecx": "cx", "rcx": "cx", "dl": "dx", "edx": "dx", "rdx": "dx", "sil": "si", "esi": "si", "rsi": "si",
            "dil": "di", "edi": "di", "rdi": "di"}.get(reg, reg)


def split_operands(text: str) -> list[str]:
    """AT&T operands split on the commas outside parentheses."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current.strip())
    return parts


def store_width(mnemonic: str, source: str) -> int:
    if source.startswith("%"):
        reg = source.lstrip("%")
        if reg[:3] in ("xmm", "ymm", "zmm"):
            if mnemonic in ("vmovq", "movq"):
                return 8
            if mnemonic in ("vmovd", "movd"):
                return 4
            return {"x": 16, "y": 32, "z": 64}[reg[0]]
        if reg.startswith("r") and not reg[-1].isdigit() and reg[-1] in "dwb":
            return {"d": 4, "w": 2, "b": 1}[reg[-1]]
        if reg.startswith("r"):
            return 8
        if reg.startswith("e"):
            return 4
        return 1 if reg.endswith(("l", "h")) else 2
    return REG_BYTES.get(mnemonic[-1], 8)


def check_stack_copy(body: list[tuple[str, str, str]], disp: int, base: str) -> str | None:
    """The problem with the stack copy at disp(base) that ldtilecfg loads, or None when colsb and rows were written."""
    zeroed: dict[str, bool] = {}
    written = {"colsb": False, "rows": False}
    for mnemonic, operands, _ in body:
        ops = split_operands(operands)
        if not ops:
            continue
        dest = ops[-1]
        if dest.startswith("%"):
            zeroed[register_family(dest)] = bool(ZERO_IDIOM.match(mnemonic)) and len(set(ops)) == 1
            continue
        m = MEMORY.match(dest)
        if not (m and "mov" in mnemonic and len(ops) == 2 and m.group("base") == base and not m.group("rest")):
            continue
        source = ops[0]
        if source in ("$0x0", "$0"):
            continue
        if source.startswith("%") and zeroed.get(register_family(source), False):
            continue
        start = int(m.group("disp") or "0", 0) - disp
        covered = range(start, start + store_width(mnemonic, source))
        for field, span in (("colsb", COLSB), ("rows", ROWS)):
            if set(covered) & set(span):
                written[field] = True
    missing = [field for field, done in written.items() if not done]
    if missing:
        return (f"the configuration at {disp:#x}({base}) gets no {' or '.join(missing)} stored before it (only zeroes): "
                "every tile would have zero rows (GCC 12's _tile_loadconfig lets the compiler drop those stores)")
    return None


def read_bytes(library: str, address: int, count: int) -> bytes:
    out = subprocess.run(["objdump", "-s", f"--start-address={address:#x}", f"--stop-address={address + count:#x}", library],
                         capture_output=True, text=True, check=True).stdout
    data = b""
    for line in out.splitlines():
        m = re.match(r"^ ([0-9a-f]+) ((?:[0-9a-f]{2,8} ){1,4})", line + " ")
        if m:
            data += bytes.fromhex(m.group(2).replace(" ", ""))
    return data[:count]


def check_constant(config: bytes) -> str | None:
    if len(config) < 64:
        return f"could not read its 64-byte configuration (got {len(config)} bytes)"
    colsb = [int.from_bytes(config[i:i + 2], "little") for i in range(16, 48, 2)]
    rows = list(config[48:64])
    if config[0] != 1:
        return f"its constant configuration has palette {config[0]}, not 1"
    if not any(r and c for r, c in zip(rows, colsb)):
        return "its constant configuration sets no tile (every tile has zero rows or zero colsb)"
    return None


def check_library(library: str) -> list[Finding]:
    listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-M", "att", library],
                             capture_output=True, text=True, check=True).stdout
    findings: list[Finding] = []
    function, body = "?", []
    for line in listing.splitlines():
        if m := FUNCTION.match(line):
            function, body = m.group("name"), []
            continue
        m = INSTRUCTION.match(line)
        if not m:
            continue
        mnemonic, operands, comment = m.group("mnemonic"), m.group("operands").strip(), m.group("comment") or ""
        if mnemonic == "ldtilecfg":
            problem = check_operand(library, operands, comment, body)
            if problem:
                findings.append(Finding(library, function, m.group("addr"), problem))
        body.append((mnemonic, operands, comment))
    return findings


def check_operand(library: str, operand: str, comment: str, body: list[tuple[str, str, str]]) -> str | None:
    m = MEMORY.match(operand)
    if not m:
        return f"an operand this check cannot read ({operand!r})"
    if m.group("base") == "%rip":
        target = RIP_TARGET.match(comment.strip())
        if not target:
            return "a rip-relative operand without objdump's target address"
        return check_constant(read_bytes(library, int(target.group("target"), 16), 64))
    if m.group("rest"):
        return f"an indexed operand this check cannot follow ({operand})"
    return check_stack_copy(body, int(m.group("disp") or "0", 0), m.group("base"))


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: amx_tile_check.py LIB...", file=sys.stderr)
        return 2
    findings = [f for library in argv for f in check_library(library)]
    for finding in findings:
        print(f"amx_tile_check: {finding}", file=sys.stderr)
    if not findings:
        print(f"amx_tile_check: every ldtilecfg in {len(argv)} file(s) loads a configuration with rows and colsb set")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
