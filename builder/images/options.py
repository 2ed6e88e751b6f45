"""What the user chose for a target: its options from flags, --set and a published variant; KEY=VALUE pairs;
platform lists."""

from __future__ import annotations

from builder.core.errors import UserError, shown
from builder.images import tags
from builder.images.catalog import Target


def parse_pairs(pairs: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"{what} {shown(pair)} is not KEY=VALUE")
        out[key] = value
    return out


def settings(target: Target, variant: str | None, sets: tuple[str, ...], extra: list[str]) -> dict[str, str]:
    """A published variant's options (if named), overridden by --set KEY=VALUE and by the target's own options
    given as flags (`--blas blis` for a target that declares `blas`; any other target refuses it by name)."""
    out = dict(tags.variant(target, variant).settings) if variant else {}
    out.update(parse_pairs(sets, "--set"))
    rest = list(extra)
    while rest:
        flag = rest.pop(0)
        if not flag.startswith("--") or len(flag) < 3:
            raise UserError(f"unexpected argument {shown(flag)}")
        key, sep, value = flag[2:].partition("=")
        name = key.replace("-", "_")
        if name not in target.options:
            known = ", ".join(target.options) or "none"
            raise UserError(f"no such option {flag[:40]}: target {target.name} has no option {shown(name)} "
                            f"(its options: {known}; see `builder list` or --help)")
        if not sep:
            if not rest:
                raise UserError(f"--{key} needs a value")
            value = rest.pop(0)
        out[name] = value
    return out


def platforms(values: tuple[str, ...] | str) -> tuple[str, ...]:
    """linux/amd64,linux/arm64, given once comma-separated or as repeated flags."""
    given = (values,) if isinstance(values, str) else values
    return tuple(p.strip() for value in given for p in value.split(",") if p.strip())
