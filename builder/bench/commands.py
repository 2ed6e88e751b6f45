"""The bench command: load-test an OpenAI-compatible server and report per concurrency level."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path

import click

from builder.bench.measure import (
    REQUESTS_MIN,
    REQUESTS_PER_SLOT,
    Api,
    LoadSettings,
    base_url,
    check_requests,
    http_url,
    parse_concurrency,
    plot,
    read_api_key,
    run,
    table,
    to_json,
)
from builder.core.errors import UserError
from builder.core.paths import atomic_write, output_file
from builder.core.progress import CountProgress
from builder.images import runtime


@click.command("bench")
@click.argument("url")
@click.option("--model", help="The model to ask for (default: the one the server lists at /v1/models).")
@click.option("--concurrency", default="1,4,16,64", show_default=True, help="Requests in flight at once, one level each, comma-separated.")
@click.option("--requests", type=click.IntRange(min=1), help=f"Requests per level (default {REQUESTS_PER_SLOT} per concurrent slot, at least {REQUESTS_MIN}).")
@click.option("--prompt-tokens", type=click.IntRange(1, 1 << 20), default=512, show_default=True, help="Prompt length in tokens (random words, different per request).")
@click.option("--max-tokens", type=click.IntRange(1, 1 << 20), default=128, show_default=True, help="Output tokens per request.")
@click.option("--api", type=click.Choice(["chat", "completions"]), default="chat", show_default=True, help="/v1/chat/completions or /v1/completions.")
@click.option("--ignore-eos/--no-ignore-eos", default=True, show_default=True, help="Ask the server to generate all --max-tokens (vLLM, SGLang, llama-server).")
@click.option("--api-key-file", type=click.Path(dir_okay=False, path_type=Path), help="A file holding the server's API key.")
@click.option("--timeout", type=click.FloatRange(min=1), default=600.0, show_default=True, help="Seconds one request may take, from sending it to its last token.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random prompts.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), metavar="PATH", help="Also write the results (with every request) as JSON.")
@click.option("--prometheus", "prometheus_url", metavar="URL", help="Also record the engine's own gauges (requests running and waiting, KV-cache usage) over each level from the Prometheus that scrapes it, e.g. http://127.0.0.1:9090 (stacks/monitoring.yml).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), metavar="PATH.png", help="Also plot throughput and latency against concurrency.")
def bench_command(url: str, model: str | None, concurrency: str, requests: int | None, prompt_tokens: int, max_tokens: int,
                  api: Api, ignore_eos: bool, api_key_file: Path | None, timeout: float, seed: int, json_path: Path | None,
                  prometheus_url: str | None, plot_path: Path | None) -> None:
    """Load-test the OpenAI-compatible server at URL: per concurrency level, requests/s, output tokens/s, time to first
    token and inter-token latency (p50, p99), errors; a Markdown table on stdout."""
    levels = parse_concurrency(concurrency)
    prometheus = None if prometheus_url is None else http_url(prometheus_url, "--prometheus", "Prometheus's address, e.g. http://127.0.0.1:9090")
    check_requests(requests, levels)
    json_target = output_target(json_path, "--json")
    plot_target = output_target(plot_path, "--plot")
    if plot_path is not None and plot_path.suffix.lower() != ".png":
        raise UserError(f"--plot {plot_path}: the plot is a PNG; name it *.png")
    if plot_path is not None and importlib.util.find_spec("matplotlib") is None:
        raise UserError("--plot needs matplotlib: install builder with its bench extra (pip install -e '.[bench]'), or leave --plot out")
    settings = LoadSettings(url=base_url(url), model=model, concurrency=levels, requests=requests, prompt_tokens=prompt_tokens,
                        max_tokens=max_tokens, api=api, ignore_eos=ignore_eos,
                        api_key=read_api_key(api_key_file) if api_key_file else None, timeout=timeout, seed=seed,
                            token_counters=runtime.output_token_counters(), prometheus=prometheus, gauges=runtime.gauges())
    progress = CountProgress("bench")
    try:
        result = asyncio.run(run(settings, progress))
    finally:
        progress.close()
    if json_target is not None:
        atomic_write(json_target, json.dumps(to_json(result), indent=1) + "\n")
    if plot_target is not None:
        plot(result, plot_target)
    click.echo(table(result), nl=False)


def output_target(path: Path | None, what: str) -> Path | None:
    """Where an output option writes, checked before the first request (core.paths.output_file): never a FIFO, a
    device or a folder; a missing folder is made; a link's target is written, and said so. A rerun replaces the
    results of the last one, as it always has (overwrite)."""
    if path is None:
        return None
    target = output_file(path, what, overwrite=True)
    if path.is_symlink():
        click.echo(f"{what} {path} is a link: writing its target {target}", err=True)
    return target


COMMANDS = (bench_command,)
