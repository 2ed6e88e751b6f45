"""`builder bench --prometheus URL`: the engine's own gauges (requests running and waiting, KV-cache usage) as the
Prometheus that scrapes it recorded them over each bench level, so the report shows the queue and the cache beside
the latencies. The names per engine are in images/<engine>/runtime.yaml (`metrics`); stacks/monitoring.yml runs
such a Prometheus. Read through Prometheus's HTTP API (/api/v1/query), after the levels ran."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import httpx2

from builder.core.errors import UserError, shown

QUERY_TIMEOUT = 10.0  # seconds one query may take: a few series over minutes, answered in milliseconds
# Subquery resolution: each second of the window weighs the same in the mean, whatever the scrape interval.
STEP = "1s"


@dataclass(frozen=True)
class Window:
    """A level's span in Unix seconds: from its first request sent to its last one finished."""

    start: float
    end: float


@dataclass(frozen=True)
class Gauge:
    """One gauge over one level, summed over the engine's series (vLLM has one per engine core): the mean over the
    window and the largest value in it. A sample taken up to one scrape interval before the window counts at its
    start, as Prometheus's instant queries do."""

    name: str  # what it measures (builder.images.runtime.GAUGES)
    metric: str  # the engine's name for it
    mean: float
    max: float


@dataclass(frozen=True)
class Recording:
    gauges: tuple[Gauge, ...] = ()
    problem: str = ""  # why there are none, where there are none


class PrometheusError(Exception):
    """Prometheus did not answer a query with a result."""


class Prometheus:
    def __init__(self, url: str, timeout: float = QUERY_TIMEOUT):
        self.url = url
        self.client = httpx2.AsyncClient(base_url=url, timeout=timeout)

    async def __aenter__(self) -> Prometheus:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    async def query(self, expr: str, at: float) -> list[float]:
        """The values of `expr`'s instant vector at Unix time `at` (one per series; empty where it has none)."""
        try:
            r = await self.client.get("/api/v1/query", params={"query": expr, "time": f"{at:.3f}"})
        except httpx2.HTTPError as e:
            raise PrometheusError(f"{self.url} does not answer ({type(e).__name__})") from None
        try:
            body: Any = r.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("status") != "success":
            detail = body.get("error") if isinstance(body, dict) else None
            raise PrometheusError(f"{self.url}/api/v1/query answered HTTP {r.status_code}"
                                  + (f": {shown(detail, 160)}" if detail else ": is this Prometheus's address?"))
        data = body.get("data")
        if not isinstance(data, dict) or data.get("resultType") != "vector" or not isinstance(data.get("result"), list):
            raise PrometheusError(f"{self.url}/api/v1/query did not answer with an instant vector")
        values = []
        for series in data["result"]:
            try:
                value = float(series["value"][1])
            except (KeyError, IndexError, TypeError, ValueError):
                raise PrometheusError(f"{self.url}/api/v1/query answered a series without a value") from None
            values.append(value)
        return values

    async def check(self, at: float) -> None:
        """Before the first request: a Prometheus answers at this address (else the user learns it after the bench)."""
        try:
            await self.query("vector(1)", at)
        except PrometheusError as e:
            raise UserError(f"--prometheus: {e}; give the address of the Prometheus that scrapes the engine, "
                            "e.g. http://127.0.0.1:9090 (stacks/monitoring.yml)") from None

    async def one(self, expr: str, at: float) -> float | None:
        values = [v for v in await self.query(expr, at) if math.isfinite(v)]
        return values[0] if values else None


async def record(prometheus: Prometheus, gauges: Mapping[str, tuple[str, ...]], window: Window) -> Recording:
    """Each gauge's mean and maximum over `window`, under the first of its names (one per engine) that Prometheus
    has samples of there."""
    seconds = max(1, math.ceil(window.end - window.start))
    found = []
    try:
        for what, metrics in gauges.items():
            for metric in metrics:
                series = f"sum({metric})[{seconds}s:{STEP}]"
                peak = await prometheus.one(f"max_over_time({series})", window.end)
                if peak is None:
                    continue  # another engine's name, or no sample in the window
                mean = await prometheus.one(f"avg_over_time({series})", window.end)
                found.append(Gauge(what, metric, mean if mean is not None else peak, peak))
                break
    except PrometheusError as e:
        return Recording(tuple(found), str(e))
    if not found:
        names = ", ".join(m for ms in gauges.values() for m in ms)
        return Recording((), f"{prometheus.url} has no sample of {names} in the level's {seconds} s: does it scrape the engine?")
    return Recording(tuple(found))
