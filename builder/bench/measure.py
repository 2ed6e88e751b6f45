"""`builder bench`: an OpenAI-compatible load generator. Per concurrency level it streams N requests, C at a time,
and reports requests/s, output tokens/s, time to first token, inter-token latency and errors, as a Markdown table,
JSON and a PNG plot. How it measures, and how far its numbers agree with the engine's own: docs/DESIGN.md."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import random
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import httpx2

from builder.bench.prometheus import Gauge, Prometheus, Recording, Window, record
from builder.core.errors import UserError, shown
from builder.core.paths import atomic_write
from builder.core.progress import CountProgress
from builder.core.values import plain, unsafe_character

CONCURRENCY_MAX = 4096
REQUESTS_PER_SLOT = 4  # default requests per level: each slot serves several in turn, so the level runs full
REQUESTS_MIN = 16
# Prompts are random picks of these words, different per request, so that no request reuses another's prompt
# from the engine's prefix cache (only the chat template's own tokens repeat).
WORDS = ("time", "year", "people", "way", "day", "man", "thing", "woman", "life", "child", "world", "school",
         "state", "family", "student", "group", "country", "problem", "hand", "part", "place", "case", "week",
         "company", "system", "program", "question", "work", "government", "number", "night", "point", "home",
         "water", "room", "mother", "area", "money", "story", "fact", "month", "lot", "right", "study", "book",
         "eye", "job", "word", "business", "issue", "side", "kind", "head", "house", "service", "friend",
         "father", "power", "hour", "game", "line", "end", "member", "law")
CALIBRATION_WORDS = (8, 24)  # two setup prompts: tokens = overhead + per_word * words, fitted through both
# Engines' Prometheus counters of output tokens at /metrics: llama-server (with --metrics), vLLM, SGLang.
METRIC = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{[^}]*\})?\s+(\S+)", re.M)
Api = Literal["chat", "completions"]
PORT_MAX = 65535
# Tokens one request's usage may claim: far beyond any context window. More is a broken or hostile counter, which
# would otherwise become a rate (10**400 overflowed the float; -22 million was reported as tokens/s).
USAGE_MAX = 10**9
TIMING_MAX = 1e12  # llama-server's timings (tokens, milliseconds): 30 years of ms; beyond it, no measurement
TIMINGS_USED = ("predicted_n", "predicted_ms", "prompt_n", "prompt_ms")  # what summarize() computes with
METRICS_TIMEOUT = 10.0  # seconds a /metrics reading may take (at most --timeout): a scrape is a small text


@dataclass(frozen=True)
class LoadSettings:
    url: str  # the server's base URL, without /v1
    model: str | None
    concurrency: tuple[int, ...]
    requests: int | None  # per level; None: REQUESTS_PER_SLOT x concurrency, at least REQUESTS_MIN
    prompt_tokens: int
    max_tokens: int
    api: Api = "chat"
    ignore_eos: bool = True
    api_key: str | None = None
    timeout: float = 600.0
    seed: int = 0
    # The engines' output-token counters in /metrics (images/*/runtime.yaml `metrics.output_tokens`).
    token_counters: tuple[str, ...] = ()
    # --prometheus: the Prometheus that scrapes the engine, and the gauges read there per level (what -> each engine's
    # name for it, images/*/runtime.yaml `metrics`).
    prometheus: str | None = None
    gauges: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def requests_for(self, concurrency: int) -> int:
        return self.requests or max(REQUESTS_MIN, REQUESTS_PER_SLOT * concurrency)


@dataclass(frozen=True)
class Sample:
    """One request, its times in seconds from the level's start."""

    start: float
    end: float
    error: str = ""
    first_token: float | None = None  # arrival of the first chunk carrying text
    last_token: float | None = None  # arrival of the chunk that finished generation (finish_reason), else the last text
    gaps: tuple[float, ...] = ()  # between successive chunks carrying text
    chunks: int = 0  # chunks carrying text
    output_tokens: int = 0  # usage.completion_tokens where the server sent it, else `chunks`
    prompt_tokens: int | None = None  # usage.prompt_tokens
    counted: Literal["usage", "chunks"] = "chunks"
    engine: dict[str, float] | None = None  # llama-server's `timings` from the last chunk

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.start

    @property
    def decode_time(self) -> float | None:
        """From the first token to the last: what the engine spends on the other output_tokens - 1."""
        if self.first_token is None or self.last_token is None or self.output_tokens < 2:
            return None
        return self.last_token - self.first_token

    @property
    def tpot(self) -> float | None:
        d = self.decode_time
        return None if d is None else d / (self.output_tokens - 1)


@dataclass(frozen=True)
class Stat:
    """p50, p99 and mean of some samples (seconds); n = 0 when there were none."""

    n: int
    p50: float | None
    p99: float | None
    mean: float | None

    @classmethod
    def of(cls, xs: list[float]) -> "Stat":
        if not xs:
            return cls(0, None, None, None)
        return cls(len(xs), percentile(xs, 50), percentile(xs, 99), statistics.fmean(xs))


def percentile(xs: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default), so that p99 of few samples is not just max."""
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


@dataclass(frozen=True)
class Level:
    concurrency: int
    requests: int
    errors: int
    first_error: str
    duration: float  # first request sent to last one finished, seconds
    request_rate: float  # finished requests / duration
    output_rate: float  # output tokens of finished requests / duration
    output_tokens: int
    prompt_tokens_mean: float | None
    counted: str  # "usage", "chunks", or "usage, chunks" where servers mixed
    ttft: Stat
    itl: Stat  # gaps between successive text chunks, pooled over the level's requests
    tpot: Stat  # per request: decode time / (output tokens - 1)
    e2e: Stat
    decode_rate: float | None  # client side: sum(output tokens - 1) / sum(decode time), tokens/s per request
    engine_decode_rate: float | None  # the same from the engine's own timings: sum(predicted_n - 1) / sum(predicted_ms)
    engine_prompt_time: Stat | None  # the engine's own prompt processing time per request (timings.prompt_ms)
    samples: tuple[Sample, ...]
    # Output tokens by the engine's own /metrics counter over the level (LoadSettings.token_counters); None where it has none.
    engine_output_tokens: int | None = None
    engine_output_problem: str = ""  # why engine_output_tokens is None where the engine does have a counter
    # --prometheus: the engine's gauges over the level (its Unix-time window), or why there are none.
    window: Window | None = None
    engine_gauges: tuple[Gauge, ...] = ()
    engine_gauges_problem: str = ""


def summarize(concurrency: int, samples: list[Sample]) -> Level:
    ok = [s for s in samples if s.ok]
    duration = max(s.end for s in samples) - min(s.start for s in samples)
    tokens = sum(s.output_tokens for s in ok)
    prompts = [s.prompt_tokens for s in ok if s.prompt_tokens is not None]
    decoding = [s for s in ok if s.decode_time is not None]
    decode_time = sum(s.decode_time for s in decoding)  # type: ignore[misc]
    timed = [s.engine for s in ok if s.engine and "predicted_ms" in s.engine and "predicted_n" in s.engine]
    engine_ms = sum(e["predicted_ms"] for e in timed if e["predicted_n"] > 1)
    return Level(
        concurrency=concurrency,
        requests=len(samples),
        errors=len(samples) - len(ok),
        first_error=next((s.error for s in samples if s.error), ""),
        duration=duration,
        request_rate=len(ok) / duration if duration > 0 else 0.0,
        output_rate=tokens / duration if duration > 0 else 0.0,
        output_tokens=tokens,
        prompt_tokens_mean=statistics.fmean(prompts) if prompts else None,
        counted=", ".join(sorted({s.counted for s in ok})),
        ttft=Stat.of([s.ttft for s in ok if s.ttft is not None]),
        itl=Stat.of([g for s in ok for g in s.gaps]),
        tpot=Stat.of([s.tpot for s in ok if s.tpot is not None]),
        e2e=Stat.of([s.end - s.start for s in ok]),
        decode_rate=sum(s.output_tokens - 1 for s in decoding) / decode_time if decode_time > 0 else None,
        engine_decode_rate=(sum(e["predicted_n"] - 1 for e in timed if e["predicted_n"] > 1) * 1000 / engine_ms
                            if timed and len(timed) == len(ok) and engine_ms > 0 else None),
        engine_prompt_time=Stat.of([e["prompt_ms"] / 1000 for e in timed if "prompt_ms" in e]) if timed else None,
        samples=tuple(samples),
    )


# --- input --------------------------------------------------------------------------------------------------------


def http_url(url: str, what: str, expected: str) -> str:
    """An http(s)://HOST[:PORT][/PREFIX] URL without its trailing slash, checked whole before any request: a port the
    socket layer cannot take (99999) ended in a traceback at the first connect. `what` names the argument, `expected`
    says what to give instead."""
    plain(url, what)
    try:
        u = httpx2.URL(url)
    except (httpx2.InvalidURL, TypeError, ValueError):
        u = None
    if u is None or u.scheme not in ("http", "https") or not u.host:
        raise UserError(f"{what} {shown(url)} is not an http(s) URL: give {expected}")
    if u.port is not None and not 1 <= u.port <= PORT_MAX:
        raise UserError(f"{what} {shown(url)}: port {u.port} is out of range (1 to {PORT_MAX})")
    if u.query or u.fragment:  # the request paths are appended to the URL: a query would end up in front of them
        raise UserError(f"{what} {shown(url)} takes no query or fragment (?... or #...): give {expected}")
    return str(u).rstrip("/")


def base_url(url: str) -> str:
    """http(s)://HOST[:PORT][/PREFIX]: the user may give it, its /v1, or an endpoint under /v1 pasted whole."""
    text = http_url(url, "URL", "the server's address, e.g. http://127.0.0.1:8080")
    for tail in ("/v1/chat/completions", "/v1/completions", "/v1"):
        if text.endswith(tail):
            return text[: -len(tail)]
    return text


def parse_concurrency(text: str) -> tuple[int, ...]:
    """'1,4,16' -> (1, 4, 16): positive, distinct, at most CONCURRENCY_MAX, run in the order given."""
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not (p.isascii() and p.isdigit()) or len(p) > 5 for p in parts):
        raise UserError(f"--concurrency {shown(text)} is not a comma-separated list of whole numbers, e.g. 1,4,16,64")
    levels = tuple(int(p) for p in parts)
    bad = [n for n in levels if not 1 <= n <= CONCURRENCY_MAX]
    if bad:
        raise UserError(f"--concurrency {shown(text)}: {bad[0]} is out of range (1 to {CONCURRENCY_MAX})")
    if len(set(levels)) != len(levels):
        raise UserError(f"--concurrency {shown(text)} names a level twice")
    return levels


def check_requests(requests: int | None, levels: tuple[int, ...]) -> None:
    if requests is None:
        return
    short = [c for c in levels if c > requests]
    if short:
        raise UserError(f"--requests {requests} is fewer than concurrency {short[0]}: that level would never have {short[0]} "
                        f"requests in flight; give --requests {max(levels)} or more, or leave it out ({REQUESTS_PER_SLOT} per slot)")


def read_api_key(path: Path) -> str:
    try:
        key = path.read_text().strip()
    except OSError as e:
        raise UserError(f"--api-key-file {path}: {e.strerror or e}") from None
    if not key or any(c.isspace() for c in key):
        raise UserError(f"--api-key-file {path}: expected one key on one line")
    return key


# --- the client -----------------------------------------------------------------------------------------------------


def said(value: object, limit: int = 200) -> str:
    """What a server sent, fit for one line of the report or of an error: whitespace runs become one space, and any
    other control character is written as its escape (an ESC sequence from a server could rewrite the terminal)."""
    text = " ".join(str(value).split())[:limit]
    return "".join(repr(ch)[1:-1] if unsafe_character(ch) else ch for ch in text)


def _server_message(r: httpx2.Response) -> str:
    """The error an OpenAI-compatible server put in its body ({"error": {"message": ...}}), else the status."""
    try:
        body = r.json()
        message = body["error"]["message"] if isinstance(body.get("error"), dict) else body.get("error") or body.get("detail") or body.get("message")
    except (ValueError, AttributeError, KeyError, TypeError, RecursionError):
        message = None
    return f"HTTP {r.status_code}" + (f": {said(message)}" if message else "")


def prompt_text(seed: int, index: int, words: int) -> str:
    rng = random.Random(f"{seed}:{index}")
    return " ".join(rng.choice(WORDS) for _ in range(words))


def request_body(s: LoadSettings, model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}
    if s.api == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if s.ignore_eos:  # vLLM, SGLang and llama-server take it: every request then yields exactly max_tokens
        body["ignore_eos"] = True
    return body


class Malformed(ValueError):
    """A chunk, or a value in one, that no OpenAI-compatible server sends: the request counts as an error."""


JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


def _typed(value: Any, kind: type, name: str) -> Any:
    """`value` where it is None (absent) or of `kind`; a Malformed naming `name` otherwise."""
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool) and kind is not bool):
        raise Malformed(f"{name} is {JSON_TYPES.get(type(value), type(value).__name__)}, not {JSON_TYPES[kind]}")
    return value


def _value(value: Any, limit: int = 40) -> str:
    """A value from a chunk, as JSON writes it ("3" a string, 3 a number), cut to `limit` with its length said: a
    usage of 10**400 is 401 digits."""
    text = json.dumps(value)
    return said(text, limit) + (f"... ({len(text)} characters)" if len(text) > limit else "")


def _tokens(value: Any, name: str) -> int | None:
    """A usage count: a whole number from 0 to USAGE_MAX, or None where the server left it out."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise Malformed(f"{name} {_value(value)} is not a whole number")
    if not 0 <= value <= USAGE_MAX:
        raise Malformed(f"{name} {_value(value)} is out of range (0 to {USAGE_MAX})")
    return value


def _measure(value: Any) -> float | None:
    """A timing (milliseconds, or tokens) as a float, or None where it is not a finite number from 0 to TIMING_MAX
    (NaN fails the comparison too; an int too large for a float is compared exactly, never converted)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= TIMING_MAX:
        return None
    return float(value)


@dataclass(frozen=True)
class Usage:
    completion_tokens: int | None = None
    prompt_tokens: int | None = None


@dataclass(frozen=True)
class Chunk:
    """What one streamed chunk says, its types checked."""

    error: str = ""  # the server's own error, sent in the stream
    texts: int = 0  # choices carrying text
    finished: bool = False  # a choice's finish_reason
    usage: Usage | None = None
    timings: dict[str, float] | None = None  # llama-server's; finite numbers only


def _choice(choice: Any, name: str) -> tuple[bool, bool]:
    """(carries text, finished) of one streamed choice. The text is chat content, a reasoning model's thinking (R1's,
    split out by --reasoning-format / --reasoning-parser: `reasoning_content` or, newer, `reasoning`), or a
    completion's text."""
    _typed(choice, dict, name)
    if choice is None:
        raise Malformed(f"{name} is null, not an object")
    delta = _typed(choice.get("delta"), dict, f"{name}.delta") or {}
    texts = [_typed(delta.get(key), str, f"{name}.delta.{key}") for key in ("content", "reasoning_content", "reasoning")]
    texts.append(_typed(choice.get("text"), str, f"{name}.text"))
    return any(texts), bool(_typed(choice.get("finish_reason"), str, f"{name}.finish_reason"))


def _usage(value: Any) -> Usage | None:
    usage = _typed(value, dict, "usage")
    if not usage:  # absent or {}: the last usage seen stands
        return None
    return Usage(_tokens(usage.get("completion_tokens"), "usage.completion_tokens"),
                 _tokens(usage.get("prompt_tokens"), "usage.prompt_tokens"))


def _timings(value: Any) -> dict[str, float] | None:
    """llama-server's timings: the ones summarize() uses must be numbers; any other that is not one is left out."""
    timings = _typed(value, dict, "timings")
    if not timings:
        return None
    kept = {}
    for key, x in timings.items():
        number = _measure(x)
        if number is None and key in TIMINGS_USED:
            raise Malformed(f"timings.{key} {_value(x)} is not a number from 0 to {TIMING_MAX:g}")
        if number is not None:
            kept[said(key, 40)] = number
    return kept


def read_chunk(data: str) -> Chunk:
    """One SSE event's data, checked: a Malformed (a ValueError) for JSON that is not a chunk of the OpenAI API."""
    try:
        chunk = json.loads(data)
    except (ValueError, RecursionError) as e:  # RecursionError: JSON nested thousands deep
        raise Malformed(f"not JSON ({type(e).__name__}): {said(data, 80)}") from None
    if not isinstance(chunk, dict):
        raise Malformed(f"not a JSON object: {said(data, 80)}")
    if chunk.get("error"):
        return Chunk(error=f"stream error: {said(chunk['error'])}")
    choices = [_choice(c, f"choices[{i}]") for i, c in enumerate(_typed(chunk.get("choices"), list, "choices") or [])]
    return Chunk(texts=sum(text for text, _ in choices), finished=any(done for _, done in choices),
                 usage=_usage(chunk.get("usage")), timings=_timings(chunk.get("timings")))


@dataclass
class Stream:
    """What one request's stream said so far."""

    times: list[float] = dataclasses.field(default_factory=list)  # arrivals of text, one per choice carrying it
    finished: float | None = None
    usage: Usage = Usage()
    engine: dict[str, float] | None = None


async def _stream(client: httpx2.AsyncClient, path: str, body: dict[str, Any], t0: float, seen: Stream) -> str:
    """Send one request and read its stream into `seen`; the error, or ""."""
    async with client.sse(path, method="POST", json=body) as events:
        r = events.response
        if r.status_code != 200:
            await r.aread()
            return _server_message(r)
        async for event in events:
            now = time.perf_counter() - t0
            if event.data.strip() == "[DONE]":
                break
            chunk = read_chunk(event.data)
            if chunk.error:
                return chunk.error
            seen.times.extend([now] * chunk.texts)
            if chunk.finished:
                seen.finished = now
            seen.usage = chunk.usage or seen.usage
            seen.engine = chunk.timings or seen.engine
    return ""


async def one_request(client: httpx2.AsyncClient, s: LoadSettings, model: str, prompt: str, max_tokens: int, t0: float) -> Sample:
    path = "/v1/chat/completions" if s.api == "chat" else "/v1/completions"
    start = time.perf_counter() - t0
    seen = Stream()
    try:
        # One deadline for the whole request: the client's own timeout bounds each read, and a server that sends an
        # SSE comment every few seconds satisfies every read for good.
        error = await asyncio.wait_for(_stream(client, path, request_body(s, model, prompt, max_tokens), t0, seen), s.timeout)
    except asyncio.TimeoutError:
        error = f"no complete answer within --timeout {s.timeout:g} s"
    except Malformed as e:
        error = f"malformed chunk: {e}"
    except httpx2.HTTPError as e:
        error = f"{type(e).__name__}: {said(e) or 'no detail'}"
    end = time.perf_counter() - t0
    times, usage = seen.times, seen.usage
    counted_usage = usage.completion_tokens is not None
    if not error and not times and not (usage.completion_tokens or 0) > 0:
        error = "the stream carried no text and no usage"
    return Sample(
        start=start, end=end, error=error,
        first_token=times[0] if times else None,
        last_token=seen.finished if seen.finished is not None and times else (times[-1] if times else None),
        gaps=tuple(b - a for a, b in zip(times, times[1:])),
        chunks=len(times),
        output_tokens=usage.completion_tokens if usage.completion_tokens is not None else len(times),
        prompt_tokens=usage.prompt_tokens,
        counted="usage" if counted_usage else "chunks",
        engine=seen.engine,
    )


async def pick_model(client: httpx2.AsyncClient, s: LoadSettings) -> str:
    """The model to ask for: --model, checked against /v1/models; or the one model the server lists."""
    try:
        r = await asyncio.wait_for(client.get("/v1/models"), s.timeout)  # the whole answer, as for every request
    except asyncio.TimeoutError:
        raise UserError(f"{s.url}/v1/models: no complete answer within --timeout {s.timeout:g} s: "
                        "is this an OpenAI-compatible server?") from None
    except httpx2.HTTPError as e:
        raise UserError(f"{s.url} does not answer ({type(e).__name__}: {said(e, 120) or 'no detail'}): is the server up, "
                        "and are the host and port right?") from None
    if r.status_code in (401, 403):
        raise UserError(f"{s.url}/v1/models: {_server_message(r)}: the server wants an API key; give --api-key-file")
    if r.status_code != 200:
        if s.model:  # a server without the listing can still serve the model named
            return s.model
        raise UserError(f"{s.url}/v1/models: {_server_message(r)}: is this an OpenAI-compatible server? Name the model with --model")
    try:
        listed = r.json()["data"]
        ids = [m["id"] for m in listed]
        aliases = [a for m in listed for a in m.get("aliases") or []]  # llama-server's --alias
        if not isinstance(listed, list) or not all(isinstance(name, str) for name in ids + aliases):
            raise TypeError("model names that are not strings")
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise UserError(f"{s.url}/v1/models did not answer with an OpenAI model list: is this an OpenAI-compatible server?") from None
    if s.model:
        if s.model not in ids + aliases:
            raise UserError(f"model {shown(s.model)} is not served at {s.url}: it serves {_names(ids) or 'none'}")
        return s.model
    if len(ids) != 1:
        raise UserError(f"{s.url} serves {len(ids)} models ({_names(ids)}): choose one with --model")
    return ids[0]


def _names(ids: list[str]) -> str:
    return ", ".join(said(name, 80) for name in ids[:8])


@dataclass(frozen=True)
class Calibration:
    """How many words make a prompt of --prompt-tokens tokens, fitted from two setup requests' usage (which also
    warm the server up: its first request pays for allocations that no later one does)."""

    words: int
    overhead: float | None  # tokens the template adds; None where the server sent no usage
    per_word: float | None
    output_tokens: int  # what the setup requests generated (the engine counts them too)


async def calibrate(client: httpx2.AsyncClient, s: LoadSettings, model: str) -> Calibration:
    samples = []
    for i, n in enumerate(CALIBRATION_WORDS):  # one at a time: a failed one ends the run, not after the next one's --timeout
        sample = await one_request(client, s, model, prompt_text(s.seed, -1 - i, n), 1, time.perf_counter())
        if sample.error:
            raise UserError(f"{s.url}: the first request failed ({sample.error})")
        samples.append(sample)
    made = sum(x.output_tokens for x in samples)
    a, b = (x.prompt_tokens for x in samples)
    if a is None or b is None or b <= a:
        return Calibration(max(1, s.prompt_tokens), None, None, made)  # no usage: one token a word, said in the report
    per_word = (b - a) / (CALIBRATION_WORDS[1] - CALIBRATION_WORDS[0])
    overhead = a - per_word * CALIBRATION_WORDS[0]
    words = round((s.prompt_tokens - overhead) / per_word)
    if words < 1:
        raise UserError(f"--prompt-tokens {s.prompt_tokens} is fewer than the {overhead:.0f} tokens the server's template adds to any prompt")
    return Calibration(words, overhead, per_word, made)


async def run_level(client: httpx2.AsyncClient, s: LoadSettings, model: str, words: int, concurrency: int, first: int,
                    progress: CountProgress) -> list[Sample]:
    n = s.requests_for(concurrency)
    todo = iter(range(first, first + n))
    samples: list[Sample] = []
    t0 = time.perf_counter()

    async def worker() -> None:
        for index in todo:  # one shared iterator: each request is taken by exactly one worker
            sample = await one_request(client, s, model, prompt_text(s.seed, index, words), s.max_tokens, t0)
            samples.append(sample)
            progress.advance(sample.ok)

    progress.start(f"concurrency {concurrency}", n)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples


@dataclass(frozen=True)
class Result:
    settings: LoadSettings
    model: str
    calibration: Calibration
    levels: tuple[Level, ...]


@dataclass(frozen=True)
class Reading:
    """The engine's output-token counter at one moment: its value, or None and why (a problem is "" where the engine
    simply has none: no /metrics, or none of the counters)."""

    tokens: float | None
    problem: str = ""


def _count(text: str) -> float | None:
    """A counter's value from /metrics: a finite number, 0 or more; None for `abc`, NaN, +Inf or 1e400."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


async def engine_tokens(client: httpx2.AsyncClient, counters: tuple[str, ...], wait: float = METRICS_TIMEOUT) -> Reading:
    """The engine's output-token counter (summed over its label sets, e.g. vLLM's per model)."""
    try:
        r = await asyncio.wait_for(client.get("/metrics"), wait)
    except asyncio.TimeoutError:
        return Reading(None, f"/metrics gave no complete answer within {wait:g} s")
    except httpx2.HTTPError:
        return Reading(None)
    if r.status_code != 200:
        return Reading(None)
    total = 0.0
    found = False
    for m in METRIC.finditer(r.text):
        if m[1] in counters:
            value = _count(m[2])
            if value is None:
                return Reading(None, f"{m[1]} {said(m[2], 40)} is not a count")
            total += value
            found = True
    if not math.isfinite(total):
        return Reading(None, f"the sum of {', '.join(counters)} is not finite")
    return Reading(total if found else None)


def tokens_between(before: Reading, after: Reading) -> Reading:
    """The output tokens the engine counted between two readings."""
    problem = before.problem or after.problem
    if problem or before.tokens is None or after.tokens is None:
        return Reading(None, problem)
    if after.tokens < before.tokens:
        return Reading(None, f"the counter went down from {before.tokens:.0f} to {after.tokens:.0f} (the engine restarted?)")
    return Reading(after.tokens - before.tokens)


async def run(s: LoadSettings, progress: CountProgress) -> Result:
    headers = {"Authorization": f"Bearer {s.api_key}"} if s.api_key else {}
    limits = httpx2.Limits(max_connections=max(s.concurrency), max_keepalive_connections=max(s.concurrency))
    timeout = httpx2.Timeout(s.timeout, connect=10.0)
    async with httpx2.AsyncClient(base_url=s.url, headers=headers, limits=limits, timeout=timeout) as client:
        model = await pick_model(client, s)
        if s.prometheus:
            async with Prometheus(s.prometheus) as prometheus:
                await prometheus.check(time.time())
        cal = await calibrate(client, s, model)
        levels = []
        first = 0
        for c in s.concurrency:
            wait = min(s.timeout, METRICS_TIMEOUT)
            before = await engine_tokens(client, s.token_counters, wait)
            started = time.time()
            samples = await run_level(client, s, model, cal.words, c, first, progress)
            window = Window(started, time.time())
            after = await engine_tokens(client, s.token_counters, wait)
            first += len(samples)
            counted = tokens_between(before, after)
            level = dataclasses.replace(summarize(c, samples),
                                        engine_output_tokens=None if counted.tokens is None else round(counted.tokens),
                                        engine_output_problem=counted.problem, window=window)
            progress.done(line(level))
            levels.append(level)
    if all(level.errors == level.requests for level in levels):
        raise UserError(f"every request failed, e.g. {levels[0].first_error}")
    if s.prometheus:
        levels = await with_gauges(s.prometheus, s.gauges, levels)
    return Result(s, model, cal, tuple(levels))


async def with_gauges(url: str, gauges: Mapping[str, tuple[str, ...]], levels: list[Level]) -> list[Level]:
    """The levels with the engine's gauges over each one's window, read once the last level ended: a query at a
    window's end sees what Prometheus scraped up to then."""
    out = []
    async with Prometheus(url) as prometheus:
        for level in levels:
            assert level.window is not None
            got: Recording = await record(prometheus, gauges, level.window)
            out.append(dataclasses.replace(level, engine_gauges=got.gauges, engine_gauges_problem=got.problem))
    return out


# --- the report ---------------------------------------------------------------------------------------------------


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.1f}"


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def line(level: Level) -> str:
    return (f"concurrency {level.concurrency}: {level.requests - level.errors}/{level.requests} ok, {level.request_rate:.2f} req/s, "
            f"{level.output_rate:.1f} output tok/s, TTFT p50 {_ms(level.ttft.p50)} ms, ITL p50 {_ms(level.itl.p50)} ms")


def table(result: Result) -> str:
    engine = any(level.engine_decode_rate is not None for level in result.levels)
    head = ["concurrency", "requests", "errors", "req/s", "output tok/s", "TTFT p50 ms", "TTFT p99 ms", "ITL p50 ms",
            "ITL p99 ms", "decode tok/s per request"] + (["engine's decode tok/s"] if engine else [])
    rows = ["| " + " | ".join(head) + " |", "|" + " ---: |" * len(head)]
    for lv in result.levels:
        cells = [str(lv.concurrency), str(lv.requests), str(lv.errors), f"{lv.request_rate:.2f}", f"{lv.output_rate:.1f}",
                 _ms(lv.ttft.p50), _ms(lv.ttft.p99), _ms(lv.itl.p50), _ms(lv.itl.p99), _rate(lv.decode_rate)]
        rows.append("| " + " | ".join(cells + ([_rate(lv.engine_decode_rate)] if engine else [])) + " |")
    s, cal = result.settings, result.calibration
    prompt = statistics.fmean(lv.prompt_tokens_mean for lv in result.levels if lv.prompt_tokens_mean is not None) \
        if any(lv.prompt_tokens_mean is not None for lv in result.levels) else None
    counted = ", ".join(sorted({c for lv in result.levels for c in lv.counted.split(", ") if c}))
    notes = [
        f"{result.model} at {s.url} ({s.api} API, streaming): prompts of "
        + (f"{prompt:.0f} tokens" if prompt is not None else f"{cal.words} words (the server reported no prompt tokens)")
        + f", up to {s.max_tokens} output tokens" + (" (ignore_eos)" if s.ignore_eos else "") + ".",
        "Output tokens counted from " + ("the server's usage" if counted == "usage" else
                                         f"{counted} (where a server sends no usage, one token per text chunk: a lower bound)") + ".",
    ]
    by_engine = [lv for lv in result.levels if lv.engine_output_tokens is not None]
    if by_engine:
        differ = [f"concurrency {lv.concurrency}: {lv.engine_output_tokens} against {lv.output_tokens}" for lv in by_engine
                  if lv.engine_output_tokens != lv.output_tokens]
        notes.append("The engine's own count of output tokens (its /metrics) " + (
            "equals the bench's at every level." if not differ else
            "differs (other clients' requests, or a failed request's tokens, count there too): " + "; ".join(differ) + "."))
    problems = list(dict.fromkeys(lv.engine_output_problem for lv in result.levels if lv.engine_output_problem))
    if problems:
        notes.append("The engine's own count of output tokens (its /metrics) is unavailable: " + "; ".join(problems) + ".")
    errors = [f"concurrency {lv.concurrency}: {lv.first_error}" for lv in result.levels if lv.errors]
    if errors:
        notes.append("First error per level: " + "; ".join(errors) + ".")
    return "\n".join(rows) + "\n\n" + "\n".join(notes) + "\n" + gauge_table(result)


GAUGE_HEADS = {"requests_running": "requests running", "requests_waiting": "requests waiting", "kv_cache_usage": "KV cache used %"}


def gauge_table(result: Result) -> str:
    """--prometheus: the engine's gauges per level, mean and max, as a second table (empty without --prometheus)."""
    if not result.settings.prometheus:
        return ""
    seen = {g.name: g.metric for lv in result.levels for g in lv.engine_gauges}
    names = [n for n in GAUGE_HEADS if n in seen]
    out = ""
    if names:
        head = ["concurrency"] + [f"{GAUGE_HEADS[n]} {q}" for n in names for q in ("mean", "max")]
        rows = ["| " + " | ".join(head) + " |", "|" + " ---: |" * len(head)]
        for lv in result.levels:
            got = {g.name: g for g in lv.engine_gauges}
            cells = [str(lv.concurrency)]
            for n in names:
                scale = 100 if n == "kv_cache_usage" else 1
                g = got.get(n)
                cells += ["-", "-"] if g is None else [f"{g.mean * scale:.2f}", f"{g.max * scale:.2f}"]
            rows.append("| " + " | ".join(cells) + " |")
        out = ("\n" + "\n".join(rows) + "\n\nThe engine's own gauges over each level, from the Prometheus at "
               f"{result.settings.prometheus} ({', '.join(seen[n] for n in names)}).\n")
    problems = list(dict.fromkeys(lv.engine_gauges_problem for lv in result.levels if lv.engine_gauges_problem))
    if problems:
        out += "\nThe engine's gauges from Prometheus are missing: " + "; ".join(problems) + ".\n"
    return out


def _stat(st: Stat | None) -> dict[str, Any] | None:
    return None if st is None else dataclasses.asdict(st)


def to_json(result: Result) -> dict[str, Any]:
    s = result.settings
    return {
        "url": s.url,
        "model": result.model,
        "settings": {k: v for k, v in dataclasses.asdict(s).items() if k not in ("url", "api_key")},
        "calibration": dataclasses.asdict(result.calibration),
        "units": "seconds; rates per second",
        "levels": [
            {
                **{f.name: getattr(lv, f.name) for f in dataclasses.fields(lv)
                   if f.name not in ("samples", "window", "engine_gauges") and not isinstance(getattr(lv, f.name), Stat)},
                "window": None if lv.window is None else dataclasses.asdict(lv.window),
                "engine_gauges": [dataclasses.asdict(g) for g in lv.engine_gauges],
                **{name: _stat(getattr(lv, name)) for name in ("ttft", "itl", "tpot", "e2e", "engine_prompt_time")},
                "requests_detail": [
                    {"start": x.start, "end": x.end, "ttft": x.ttft, "decode_time": x.decode_time, "output_tokens": x.output_tokens,
                     "chunks": x.chunks, "prompt_tokens": x.prompt_tokens, "counted": x.counted, "error": x.error, "engine": x.engine}
                    for x in lv.samples
                ],
            }
            for lv in result.levels
        ],
    }


def plot(result: Result, path: Path) -> None:
    """Throughput and latency against concurrency, side by side."""
    import matplotlib  # lazily: `builder` starts without it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [lv.concurrency for lv in result.levels]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    # Total throughput against what each request sees: the trade a concurrency level makes.
    total = left.plot(xs, [lv.output_rate for lv in result.levels], "o-", color="tab:blue", label="output tokens/s, all requests")
    left.set_ylabel("output tokens/s, all requests")
    each = left.twinx()
    per = each.plot(xs, [lv.decode_rate for lv in result.levels], "s--", color="tab:green", label="decode tokens/s, per request")
    each.set_ylabel("decode tokens/s, per request")
    left.set_ylim(bottom=0)
    each.set_ylim(bottom=0)
    left.legend(handles=total + per, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, frameon=False)
    left.set_title("throughput")
    for name, color in (("ttft", "tab:orange"), ("itl", "tab:purple")):
        for q, style in (("p50", "o-"), ("p99", "s:")):
            ys = [getattr(getattr(lv, name), q) for lv in result.levels]
            right.plot(xs, [None if y is None else y * 1000 for y in ys], style, color=color, label=f"{name.upper()} {q}")
    right.set_ylabel("ms (log scale)")
    right.set_yscale("log")
    right.set_title("latency")
    right.legend()
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("concurrent requests")
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"{result.model} at {result.settings.url}", fontsize=10)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
