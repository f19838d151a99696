"""Composition root: config -> languages -> sandbox -> runner -> service -> aiohttp app.

Also the process lifecycle: start-up checks (the journal opens, every language's
seccomp profile compiles, every toolchain answers its version command in a real box),
recovery of the journaled jobs, serving, and a graceful drain on SIGTERM/SIGINT: stop
accepting, finish what runs up to `server.shutdown_deadline_s`, kill what remains
(journaled: it runs after the next start), remove every cgroup and workspace.
"""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import logging
import platform
import signal

from aiohttp import web

from sandboxd import api, console, judge0, openapi, redis_backend, webhooks
from sandboxd import languages as languages_mod
from sandboxd.config import Config, journal_path
from sandboxd.jail import seccomp
from sandboxd.jail.spec import JailError, SeccompProfile
from sandboxd.jail.supervisor import Sandbox
from sandboxd.journal import Journal, JournalError
from sandboxd.metrics import Metrics
from sandboxd.model import CallbackFormat
from sandboxd.runner import Runner
from sandboxd.service import Service

log = logging.getLogger("sandboxd")


M_MMAP_THRESHOLD = -3  # mallopt(3)
LARGE_BUFFER_BYTES = 1 << 20


def return_large_buffers_to_the_os() -> None:
    """Request bodies, sources and stdin of up to 16 MiB pass through here. glibc raises
    its mmap threshold after freeing such a buffer, so later ones come from the heap
    and stay resident after the jobs are gone; a fixed threshold keeps every buffer
    over 1 MiB in its own mapping, unmapped when freed. (Measured: 20 jobs of 15 MiB
    stdin left the daemon at 142 MiB resident instead of 50.)"""
    try:
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, LARGE_BUFFER_BYTES)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


class StartupError(Exception):
    """The daemon cannot serve; the message is the one line the operator sees."""


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise StartupError(f"--listen: expected HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def warn_if_open_to_the_network(host: str, port: int, config: Config) -> None:
    """Anyone who can reach a non-loopback address without a token can run code here."""
    if not config.auth.tokens and not is_loopback(host):
        log.warning("listening on %s:%d, which is not a loopback address, without API "
                    "tokens: anyone who can reach it can run programs here; set [auth] "
                    "tokens in the configuration", host, port)


def load_languages(config: Config) -> languages_mod.Registry:
    try:
        registry = languages_mod.load(config.server.languages_file, config.sandbox.rootfs_dir)
    except languages_mod.LanguageError as e:
        raise StartupError(str(e)) from None
    for lang in registry:
        try:
            seccomp.build_filter(SeccompProfile(lang.extra_syscalls))
        except ValueError as e:
            raise StartupError(f"language {lang.id}: extra_syscalls: {e}") from None
    return registry


def make_sandbox(config: Config) -> Sandbox:
    sb = config.sandbox
    return Sandbox(state_dir=sb.state_dir, slots=config.server.worker_count,
                   uid_base=sb.uid_base, cgroup_version=sb.cgroup_version,
                   cgroup_root=sb.cgroup_root, warm_boxes=sb.warm_boxes)


async def probe_versions(runner: Runner, registry: languages_mod.Registry) -> None:
    """Every language's toolchain, checked: its programs exist on this host, and its
    version command succeeds in a real box. One that fails is listed as unavailable
    (GET /languages) and refused (400), never a reason not to start."""

    def unavailable(lang: languages_mod.Language, reason: str) -> None:
        log.warning("language %s unavailable: %s", lang.id, reason)
        registry.set_unavailable(lang.id, reason)

    async def probe(lang: languages_mod.Language) -> None:
        missing = languages_mod.missing_executables(lang)
        if missing:
            unavailable(lang, f"toolchain not installed ({', '.join(missing)} missing; "
                              f"Debian packages: {' '.join(lang.packages)})")
            return
        if not lang.version_command:
            return
        try:
            ok, version, output = await runner.probe(lang)
        except JailError as e:
            unavailable(lang, f"version command could not run: {e}")
            return
        if not ok:
            last = output.strip().splitlines()[-1:] or ["no output"]
            unavailable(lang, f"version command failed: {last[0][:200]}")
            return
        registry.set_version(lang.id, version)
        if version is None:
            log.warning("language %s: version command gave no version", lang.id)

    await asyncio.gather(*(probe(lang) for lang in registry))


async def open_journal(config: Config) -> Journal | None:
    """The journal of `server.journal` (None: "none", memory only); unusable is a
    start-up error: accepting jobs that a crash would lose is not an option."""
    path = journal_path(config.server)
    if path is None:
        return None
    try:
        return await Journal.open(path)
    except JournalError as e:
        raise StartupError(f"journal (server.journal, --journal): {e}") from None


async def start_redis_service(runner: Runner, config: Config, metrics: Metrics,
                              dispatcher: webhooks.Dispatcher) -> redis_backend.RedisService:
    """The shared queue and result store of several hosts (queue.redis_url, --redis)."""
    try:
        client = await redis_backend.connect(config.queue.redis_url)
        service = redis_backend.RedisService.from_config(runner, config, client,
                                                         observer=metrics, notifier=dispatcher)
        await service.start()
    except redis_backend.RedisStartupError as e:
        raise StartupError(f"queue.redis_url, --redis: {e}") from None
    metrics.watch_cluster(lambda: service.oldest_waiting_s)
    log.info("sandboxd: jobs queued on Redis %s as consumer %s",
             _without_password(config.queue.redis_url), service.consumer)
    return service


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest


async def serve(config: Config) -> None:
    return_large_buffers_to_the_os()
    host, port = parse_listen(config.server.listen)
    registry = load_languages(config)
    journal = await open_journal(config)
    try:
        await _serve(config, host, port, registry, journal)
    finally:
        if journal is not None:
            await journal.close()


async def _serve(config: Config, host: str, port: int, registry: languages_mod.Registry,
                 journal: Journal | None) -> None:
    try:
        sandbox = make_sandbox(config)
        sandbox.start()
    except Exception as e:
        raise StartupError(f"cannot set up sandboxes: {e}") from None
    try:
        # The observer of runner and service, and the /metrics endpoint's registry.
        metrics = Metrics()
        metrics.watch_sandbox(lambda: len(sandbox.warm_box_names()))
        runner = Runner(sandbox, registry, config, observer=metrics)
        await probe_versions(runner, registry)
        store = journal if journal is not None else webhooks.MemoryDeliveryStore()
        # A Judge0 API submission is called back as Judge0 does: its shape, PUT. Known
        # even with the Judge0 API off: a journaled job may still carry that format.
        judge0_callback = webhooks.CallbackShape("PUT", judge0.callback_body)
        dispatcher = webhooks.Dispatcher(config.webhooks, store, observer=metrics,
                                         shapes={CallbackFormat.JUDGE0: judge0_callback})
        await dispatcher.start()
        service: Service | redis_backend.RedisService
        if config.queue.redis_url:
            service = await start_redis_service(runner, config, metrics, dispatcher)
        else:
            service = Service.from_config(runner, config, journal=journal, observer=metrics,
                                          notifier=dispatcher)
            # Recovers the journaled jobs: they start running before the port opens.
            await service.start()
        def callback_check(url: str) -> str | None:
            return webhooks.validate_callback_url(url, config.webhooks)

        app = api.create_app(service, registry, config, metrics=metrics,
                             callback_check=callback_check)
        if config.judge0.enabled:
            judge0.add_judge0_routes(app, service=service, languages=registry, config=config,
                                     callback_check=callback_check)
        openapi.add_openapi_route(app, config, [lang.id for lang in registry])
        if config.console.enabled:
            console.add_console_routes(
                app, service=service, languages=registry, config=config, metrics=metrics,
                host=console.HostInfo(kernel=platform.release(), cgroup=sandbox.cgroup_version))
        app_runner = web.AppRunner(app, access_log=None)
        await app_runner.setup()
        site = web.TCPSite(app_runner, host, port)
        try:
            await site.start()
        except OSError as e:
            raise StartupError(f"cannot listen on {host}:{port}: {e.strerror}") from None
        warn_if_open_to_the_network(host, port, config)
        log.info("sandboxd listening on http://%s:%d (cgroup %s, %d workers, %d languages, "
                 "journal %s)", host, port, sandbox.cgroup_version, config.server.worker_count,
                 len(registry), journal.path if journal is not None else "off")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        deadline = config.server.shutdown_deadline_s
        log.info("sandboxd: draining (running jobs get up to %g s; new ones get 503)", deadline)
        # The port stays open meanwhile: POST answers 503, results can still be read.
        await service.stop(deadline)
        await dispatcher.stop(deadline)
        await site.stop()
        await app_runner.cleanup()
    finally:
        sandbox.close()
