"""What the journal costs the service, measured (not asserted): `.venv/bin/python bench/journal.py`.

The service with a fake runner (no boxes: only the queue, the journal and the result store
are measured; each run instant, or a sleep as long as a fast box) takes N submissions from
C concurrent submitters and runs them to their results, once without a journal, once with
one (SQLite, WAL, group commits), and once with a journal but one commit per write (what
group commits save). Each job is three journal writes: accepted, started, finished.

Prints jobs/s and the commits made; numbers depend on the host and its disk.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandboxd.journal import Journal  # noqa: E402
from sandboxd.model import Limits, Result, Status, Submission  # noqa: E402
from sandboxd.service import Service  # noqa: E402

LIMITS = Limits(time_limit_ms=1000, wall_time_limit_ms=3000, memory_limit_mb=64)


class FakeRunner:
    """A run of `seconds` without a box (0: instant)."""

    healthy = True

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def run(self, submission: Submission) -> Result:
        await asyncio.sleep(self.seconds)
        return Result(status=Status.ACCEPTED, stdout=submission.source, exit_code=0)


class OneCommitPerWrite(Journal):
    """The same journal, but each write waits for the one before it to commit."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._serial = asyncio.Lock()

    async def _call(self, fn, *, setup: bool = False,  # type: ignore[no-untyped-def]
                    power_safe: bool = True):
        async with self._serial:
            return await super()._call(fn, setup=setup, power_safe=power_safe)


async def measure(kind: str, jobs: int, clients: int, run_s: float,
                  directory: Path) -> tuple[float, int]:
    journal: Journal | None = None
    if kind == "journal":
        journal = await Journal.open(directory / f"group-{run_s}.db")
    elif kind == "journal, no group commit":
        journal = await OneCommitPerWrite.open(directory / f"serial-{run_s}.db")
    service = Service(FakeRunner(run_s), workers=2, queue_size=jobs, results_kept=jobs,
                      journal=journal)
    await service.start()
    per_client = jobs // clients

    async def client(c: int) -> None:
        for i in range(per_client):
            job_id = await service.submit(
                Submission(language="python3", source=f"print({c}, {i})", limits=LIMITS))
            await service.wait(job_id)

    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    elapsed = time.perf_counter() - started
    await service.stop(5)
    commits = journal.commits if journal is not None else 0
    if journal is not None:
        await journal.close()
    return per_client * clients / elapsed, commits


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--run-ms", type=float, nargs="+", default=[0, 20],
                        help="how long each fake run takes (default: 0 and 20 ms)")
    args = parser.parse_args()
    print(f"{args.jobs} jobs, {args.clients} concurrent submitters, 2 workers, no boxes")
    print(f"{'run':>6}  {'':28} {'jobs/s':>8} {'commits':>8}")
    with tempfile.TemporaryDirectory(prefix="sandboxd-bench-journal-") as tmp:
        for run_ms in args.run_ms:
            jobs = args.jobs if run_ms == 0 else min(args.jobs, int(20_000 / run_ms))
            for kind in ("memory only", "journal", "journal, no group commit"):
                rate, commits = await measure(kind, jobs, args.clients, run_ms / 1000,
                                              Path(tmp))
                print(f"{run_ms:4g}ms  {kind:28} {rate:8.0f} {commits:8d}")


if __name__ == "__main__":
    asyncio.run(main())
