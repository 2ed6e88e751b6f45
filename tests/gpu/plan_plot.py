"""The plot of tests/gpu/plan.sh's sweep: tg128 and pp512 against the free GPU memory, one line per way of placing
the model, one column per quant mix. Made from sweep.csv where matplotlib is (the GPU machine may lack it).
A budget measured in several runs is drawn at the mean of its runs, each run's own value a faint dot beside it: the
decode spread between runs can be larger than llama-bench's within one.

usage: python3 tests/gpu/plan_plot.py SWEEP_CSV OUT.png
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

WAYS = ("recipe", "cpu-moe", "fit", "plan", "measure")
STYLE = {"recipe": ("tab:gray", "v"), "cpu-moe": ("tab:brown", "s"), "fit": ("tab:blue", "o"),
         "plan": ("tab:orange", "^"), "measure": ("tab:green", "*")}


def read(path: Path) -> dict[str, dict[str, list[tuple[float, float, float, float, float]]]]:
    """quant -> way -> [(free GiB, pp512, its sd, tg128, its sd)] for the rows that ran, by budget."""
    out: dict[str, dict[str, list[tuple[float, float, float, float, float]]]] = {}
    with path.open() as f:
        for r in csv.DictReader(f):
            if not r["tg128"] or r["status"].startswith("as at"):  # no result, or a copy of another budget's
                continue
            out.setdefault(r["quant"], {}).setdefault(r["way"], []).append(
                (float(r["free_gib"]), float(r["pp512"]), float(r["pp512_sd"]), float(r["tg128"]), float(r["tg128_sd"])))
    return out


def plot(data: dict[str, dict[str, list[tuple[float, float, float, float, float]]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quants = sorted(data)
    fig, axes = plt.subplots(2, len(quants), figsize=(6 * len(quants), 8), squeeze=False)
    for col, quant in enumerate(quants):
        for way in WAYS:
            points = sorted(data[quant].get(way, []))
            if not points:
                continue
            color, marker = STYLE[way]
            by_budget: dict[float, list[tuple[float, float, float, float, float]]] = {}
            for p in points:
                by_budget.setdefault(p[0], []).append(p)
            x = sorted(by_budget)
            for row, (value, sd, label) in enumerate(((3, 4, "tg128 tokens/s"), (1, 2, "pp512 tokens/s"))):
                ax = axes[row][col]
                mean = [statistics.fmean(p[value] for p in by_budget[gib]) for gib in x]
                spread = [statistics.fmean(p[sd] for p in by_budget[gib]) for gib in x]
                ax.errorbar(x, mean, yerr=spread, color=color, marker=marker,
                            label=way, capsize=3, linestyle="--" if way == "measure" else "-")
                repeated = [(p[0], p[value]) for gib in x if len(by_budget[gib]) > 1 for p in by_budget[gib]]
                if repeated:
                    ax.scatter(*zip(*repeated), color=color, alpha=0.35, s=12)
                ax.set_ylabel(label)
                ax.set_xlabel("free GPU memory, GiB")
                ax.set_title(f"R1-shaped {quant}: {label.split()[0]}")
                ax.grid(alpha=0.3)
        axes[0][col].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    plot(read(args.csv), args.out)


if __name__ == "__main__":
    main()
