"""A callback receiver for end-to-end tests of a real daemon (the `receiver` fixture of
conftest.py): an aiohttp server on
127.0.0.1 in a thread with its own event loop (so synchronous tests can drive it),
answering every request, whatever its method and path, with the next of `statuses`
(the last one repeats), and keeping what it got."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import NamedTuple

from aiohttp import web
from multidict import CIMultiDict

WAIT_BOUND_S = 120  # a generous bound for what should happen, not a measurement


class Received(NamedTuple):
    method: str
    path: str  # with the query string
    headers: CIMultiDict[str]  # names case-insensitive, as HTTP has them
    body: bytes


class Receiver:
    def __init__(self, statuses: list[int]):
        self.statuses = statuses
        self.requests: list[Received] = []
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)

    async def _start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._receive)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port: int = runner.addresses[0][1]
        return runner

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self.lock:
            self.requests.append(Received(request.method, request.path_qs,
                                          CIMultiDict(request.headers), body))
            status = self.statuses[min(len(self.requests), len(self.statuses)) - 1]
        return web.Response(status=status)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_for(self, count: int) -> list[Received]:
        """The requests so far, once there are at least `count` of them."""
        deadline = time.monotonic() + WAIT_BOUND_S
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            time.sleep(0.05)
        raise AssertionError(f"receiver got {len(self.requests)} request(s), expected {count}")

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()

