"""The web console (`GET /`): a playground and a live status page, served by the daemon.

The page and its two static files are the only paths added without a token: they hold
no data. Everything the page shows comes from the public API (`/languages`, `/execute`,
`/result/{id}`) and from `GET /console/status`, a JSON summary of the same counters
`/metrics` exposes; those answer exactly as they would to curl, token included. The
files are fixed names read from this package (no directory is served, so no path can
reach outside it), with a Content-Security-Policy that lets the page run only its own
script: output shown as text stays text even if a bug ever put it into HTML.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import hdrs, web

from sandboxd.api import PUBLIC_PATHS, JobService, LanguageCatalog, json_response
from sandboxd.config import Config
from sandboxd.metrics import Metrics
from sandboxd.model import Status

# Seconds between two samples of the counters, and how far back the status page looks.
SAMPLE_INTERVAL_S = 1.0
WINDOW_S = 600.0

# URL path -> (file in static/, Content-Type).
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/console/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/console/console.css": ("console.css", "text/css; charset=utf-8"),
    "/console/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
STATUS_PATH = "/console/status"

# Only the page's own files; no inline script or style, no other origin, no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; "
                                "img-src 'self'; connect-src 'self'; form-action 'none'; "
                                "base-uri 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The files ship with the package: a new version must not be hidden by a cache.
    "Cache-Control": "no-cache",
}

FINAL_STATUSES = tuple(s for s in Status if s.is_final)
JOBS_FINISHED = "sandboxd_jobs_finished"
JOB_SECONDS = "sandboxd_job_seconds"


@dataclass(frozen=True)
class HostInfo:
    """What the status page says of the host: the kernel release and the cgroup mode."""

    kernel: str
    cgroup: str


@dataclass(frozen=True)
class Sample:
    """The counters at one moment: cumulative, so two samples give the rates between."""

    t: float
    queued: int
    running: int
    finished: dict[str, float]  # by status
    latency_buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count)


def read_sample(metrics: Metrics, service: JobService, now: float) -> Sample:
    stats = service.stats()
    finished: dict[str, float] = {s.value: 0.0 for s in FINAL_STATUSES}
    buckets: list[tuple[float, float]] = []
    for family in metrics.registry.collect():
        if family.name == JOBS_FINISHED:
            for s in family.samples:
                if s.name == JOBS_FINISHED + "_total":
                    status = s.labels["status"]
                    finished[status] = finished.get(status, 0.0) + s.value
        elif family.name == JOB_SECONDS:
            buckets = [(float(s.labels["le"]), s.value) for s in family.samples
                       if s.name == JOB_SECONDS + "_bucket"]
    buckets.sort()
    return Sample(now, stats.queued, stats.running, finished, tuple(buckets))


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated inside its bucket as
    Prometheus' histogram_quantile does; None without observations. A quantile in the
    +Inf bucket is reported as the largest finite bound (all that is known of it)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    counts = [c for _, c in buckets]
    i = bisect.bisect_left(counts, rank)
    i = min(i, len(buckets) - 1)
    upper, count = buckets[i]
    if upper == float("inf"):
        return buckets[i - 1][0] if i > 0 else None
    lower, below = (buckets[i - 1] if i > 0 else (0.0, 0.0))
    if count == below:
        return upper
    return lower + (upper - lower) * (rank - below) / (count - below)


class StatusHistory:
    """Samples of the counters over the last `WINDOW_S` seconds, taken every
    `SAMPLE_INTERVAL_S` by a task that lives as long as the app."""

    def __init__(self, metrics: Metrics, service: JobService,
                 clock: Callable[[], float] = time.time) -> None:
        self._metrics = metrics
        self._service = service
        self._clock = clock
        self._samples: deque[Sample] = deque(maxlen=int(WINDOW_S / SAMPLE_INTERVAL_S) + 1)

    def sample(self) -> Sample:
        s = read_sample(self._metrics, self._service, self._clock())
        self._samples.append(s)
        return s

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(SAMPLE_INTERVAL_S)

    def summary(self) -> dict[str, Any]:
        """The series between consecutive samples, and the window's totals."""
        now = read_sample(self._metrics, self._service, self._clock())
        samples = [*self._samples, now]
        series = []
        for before, after in zip(samples, samples[1:], strict=False):
            span = after.t - before.t
            if span <= 0:
                continue
            verdicts = {k: after.finished.get(k, 0.0) - before.finished.get(k, 0.0)
                        for k in after.finished}
            series.append({
                "t": round(after.t, 3),
                "queued": after.queued,
                "running": after.running,
                "jobs_per_s": round(sum(verdicts.values()) / span, 3),
                "verdicts": {k: int(v) for k, v in verdicts.items() if v},
            })
        first = samples[0]
        window_verdicts = {k: int(now.finished.get(k, 0.0) - first.finished.get(k, 0.0))
                           for k in now.finished}
        at_start = dict(first.latency_buckets)
        window_buckets = [(le, c - at_start.get(le, 0.0)) for le, c in now.latency_buckets]
        return {
            "window_s": round(now.t - first.t, 3),
            "series": series,
            "verdicts": {k: v for k, v in window_verdicts.items() if v},
            "latency_s": {name: quantile(q, window_buckets)
                          for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))},
        }


def _static_handler(name: str, content_type: str) -> Callable[[web.Request], Any]:
    body = resources.files(__package__).joinpath("static", name).read_bytes()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type,
                                                **SECURITY_HEADERS})

    return handler


def add_console_routes(app: web.Application, *, service: JobService,
                       languages: LanguageCatalog, config: Config, metrics: Metrics,
                       host: HostInfo) -> None:
    """Serve the console on `app` (an `api.create_app` application): `/`, its static
    files (open, like /health) and `GET /console/status` (behind the API's tokens)."""
    history = StatusHistory(metrics, service)

    async def status(request: web.Request) -> web.Response:
        stats = service.stats()
        listed = languages.describe(config)
        return json_response({
            "queued": stats.queued,
            "running": stats.running,
            "workers": config.server.worker_count,
            "queue_size": config.server.queue_size,
            "finished": {s.value: n for s, n in stats.finished.items()},
            "kernel": host.kernel,
            "cgroup": host.cgroup,
            "auth": bool(config.auth.tokens),
            "languages": [{"id": lang["id"], "name": lang["name"],
                           "available": lang["available"]} for lang in listed],
            "sample_interval_s": SAMPLE_INTERVAL_S,
            **history.summary(),
        })

    async def sampling(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(history.run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    for path, (name, content_type) in STATIC_FILES.items():
        app.router.add_get(path, _static_handler(name, content_type))
    app.router.add_get(STATUS_PATH, status)
    app[PUBLIC_PATHS].update(STATIC_FILES)
    app.cleanup_ctx.append(sampling)
