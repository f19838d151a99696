"""Command line: `sandboxd serve`, `sandboxd run`, `sandboxd languages`.

Exit status: 0 success (for `run`: Accepted), 1 another verdict (`run`), 2 a usage or
set-up error, with one line on stderr saying what is wrong.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandboxd import __version__
from sandboxd.config import Config, ConfigError, load, validate_queue

if TYPE_CHECKING:
    from sandboxd.model import Result, Submission

# What building a box needs from the host: namespaces and mounts (SYS_ADMIN), id maps
# and the box uid (SETUID/SETGID), cgroup files and /proc of other processes
# (DAC_OVERRIDE, SYS_PTRACE for /proc/<pid>/uid_map of the box), killing boxes (KILL).
REQUIRED_CAPS = {"CAP_SYS_ADMIN": 21, "CAP_SETUID": 7, "CAP_SETGID": 6,
                 "CAP_DAC_OVERRIDE": 1, "CAP_KILL": 5}

# Read when --config is not given and the file exists (`make install` puts it there).
DEFAULT_CONFIG = "/etc/sandboxd/sandboxd.toml"

EXIT_ACCEPTED, EXIT_VERDICT, EXIT_USAGE = 0, 1, 2


def missing_capabilities() -> list[str]:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                effective = int(line.split()[1], 16)
                return [name for name, bit in REQUIRED_CAPS.items() if not effective >> bit & 1]
    return list(REQUIRED_CAPS)


def _fail(message: str) -> int:
    print(f"sandboxd: {message}", file=sys.stderr)
    return EXIT_USAGE


def _privilege_problem() -> str | None:
    missing = missing_capabilities()
    if os.geteuid() != 0 or missing:
        return ("must run as root (or with " + ", ".join(missing or REQUIRED_CAPS)
                + "): sandboxes are built from namespaces, mounts and cgroups")
    return None


def config_path(given: str | None) -> str | None:
    """--config if given, else the installed default if it exists, else none (defaults)."""
    if given is not None:
        return given
    return DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None


def load_config(args: argparse.Namespace) -> Config:
    """The configuration file (see config_path), then the command line's overrides."""
    config = load(config_path(args.config))
    if getattr(args, "listen", None):
        config = replace(config, server=replace(config.server, listen=args.listen))
    return config


# -- serve ---------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from sandboxd import logs, server  # noqa: PLC0415 - keep `sandboxd --help` fast

    problem = _privilege_problem()
    if problem:
        return _fail(problem)
    try:
        config = load_config(args)
        if args.journal is not None:
            if not args.journal:
                raise ConfigError('--journal: expected a file path, or "none"')
            config = replace(config, server=replace(config.server, journal=args.journal))
        if args.redis is not None:
            config = replace(config, queue=replace(config.queue, redis_url=args.redis))
            validate_queue(config.queue)
        server.parse_listen(config.server.listen)
    except (ConfigError, server.StartupError) as e:
        return _fail(str(e))
    # One JSON object per line on stderr: journald keeps it, log shippers parse it.
    logs.configure(logging.INFO)
    import uvloop  # noqa: PLC0415

    try:
        uvloop.run(server.serve(config))
    except server.StartupError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        pass
    return 0


# -- run -----------------------------------------------------------------------------


def _read_text(path: str, what: str) -> str:
    """A file's content as UTF-8 text ("-": standard input); UsageError if unreadable."""
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"{what}: cannot read {path}: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{what}: {path} is not UTF-8 text (byte {e.start})") from None


class UsageError(Exception):
    """`sandboxd run` cannot start; the message is the one line the operator sees."""


# Submission fields and the flags that set them, to name the flag in an error.
RUN_FLAGS = {"time_limit_ms": "--time-limit-ms", "wall_time_limit_ms": "--wall-time-limit-ms",
             "memory_limit_mb": "--memory-limit-mb", "source": "FILE", "stdin": "--stdin",
             "expected_output": "--expected-output", "language": "--language"}


def build_submission(args: argparse.Namespace, config: Config, registry: Any) -> Submission:
    """The submission `run` describes, validated exactly as POST /execute validates it."""
    from sandboxd import api  # noqa: PLC0415

    body: dict[str, Any] = {"language": args.language,
                            "source": _read_text(args.file, "FILE")}
    if args.stdin is not None:
        body["stdin"] = _read_text(args.stdin, "--stdin")
    if args.expected_output is not None:
        body["expected_output"] = _read_text(args.expected_output, "--expected-output")
    for name in ("time_limit_ms", "wall_time_limit_ms", "memory_limit_mb"):
        value = getattr(args, name)
        if value is not None:
            body[name] = value
    try:
        return api.SubmissionParser(registry, config).parse(body)
    except api.FieldError as e:
        where = RUN_FLAGS.get(e.field or "", e.field)
        raise UsageError(f"{where}: {e.rule}" if where else e.rule) from None


def cli_sandbox_config(config: Config) -> Config:
    """One box slot, whose host uids come right after the daemon's slots (the daemon
    with this configuration uses uid_base .. uid_base + 2 x workers - 1): a box of
    `run` never shares its uids, and so its per-user kernel counts, with a daemon's."""
    slot_uids = 2 * config.server.worker_count
    return replace(config, server=replace(config.server, workers=1),
                   sandbox=replace(config.sandbox, uid_base=config.sandbox.uid_base + slot_uids))


async def run_one(config: Config, registry: Any, submission: Submission) -> Result:
    """One submission through the same jail the daemon uses: a sandbox of one slot, a
    runner, no HTTP and no queue."""
    from sandboxd import server  # noqa: PLC0415
    from sandboxd.runner import Runner  # noqa: PLC0415

    config = cli_sandbox_config(config)
    try:
        sandbox = server.make_sandbox(config)
        sandbox.start()
    except Exception as e:
        raise UsageError(f"cannot set up sandboxes: {e}") from None
    try:
        return await Runner(sandbox, registry, config).run(submission)
    finally:
        sandbox.close()


def print_result(result: Result, as_json: bool) -> None:
    if as_json:
        import orjson  # noqa: PLC0415

        body = result.to_json("")
        del body["submission_id"]  # nothing was submitted anywhere
        sys.stdout.write(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() + "\n")
        return

    def ms(value: int | None) -> str:
        return "-" if value is None else f"{value} ms"

    lines = [f"status:       {result.status.value}"]
    if result.message:
        lines.append(f"message:      {result.message}")
    lines += [
        f"time:         {ms(result.time_ms)} CPU, {ms(result.wall_time_ms)} wall",
        f"memory:       {'-' if result.memory_kb is None else f'{result.memory_kb} KiB'}",
        f"exit code:    {'-' if result.exit_code is None else result.exit_code}"
        + (f" (signal {result.signal})" if result.signal is not None else ""),
    ]
    for title, text in (("compile output", result.compile_output), ("stdout", result.stdout),
                        ("stderr", result.stderr)):
        if text:
            lines.append(f"--- {title} ---")
            lines.append(text.removesuffix("\n"))
    sys.stdout.write("\n".join(lines) + "\n")


def cmd_run(args: argparse.Namespace) -> int:
    from sandboxd import languages, server  # noqa: PLC0415
    from sandboxd.model import Status  # noqa: PLC0415

    logging.basicConfig(level=logging.WARNING, format="sandboxd: %(message)s")
    try:
        config = load_config(args)
        registry = server.load_languages(config)
        if args.language in registry:
            missing = languages.missing_executables(registry[args.language])
            if missing:
                registry.set_unavailable(args.language, f"toolchain not installed "
                                         f"({', '.join(missing)} missing)")
        submission = build_submission(args, config, registry)
        problem = _privilege_problem()
        if problem:
            raise UsageError(problem)
        import uvloop  # noqa: PLC0415

        result = uvloop.run(run_one(config, registry, submission))
    except (ConfigError, server.StartupError, UsageError) as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return 130
    print_result(result, args.json)
    if result.status is Status.ACCEPTED:
        return EXIT_ACCEPTED
    # The sandbox failed, not the program: a set-up problem for the operator.
    return EXIT_USAGE if result.status is Status.INTERNAL_ERROR else EXIT_VERDICT


# -- languages -------------------------------------------------------------------------


def cmd_languages(args: argparse.Namespace) -> int:
    from sandboxd import languages  # noqa: PLC0415

    try:
        config = load_config(args)
        registry = languages.load(config.server.languages_file, config.sandbox.rootfs_dir)
    except (ConfigError, languages.LanguageError) as e:
        return _fail(str(e))
    for lang in registry:
        kind = "compiled" if lang.compiled else "interpreted"
        # Only whether its programs exist (the daemon also runs the version command).
        missing = languages.missing_executables(lang)
        state = f"not installed ({' '.join(lang.packages)})" if missing else "installed"
        print(f"{lang.id:12} {lang.name:32} {kind:12} {lang.source:12} {state}")
    return 0


def _integer(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, not {text!r}") from None
    return value


def parser() -> argparse.ArgumentParser:
    config_help = f"TOML configuration file (default: {DEFAULT_CONFIG} if it exists)"
    parser = argparse.ArgumentParser(prog="sandboxd", description="code-execution sandbox")
    parser.add_argument("--version", action="version", version=f"sandboxd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the HTTP API")
    serve.add_argument("--listen", metavar="HOST:PORT",
                       help="overrides [server] listen (default 127.0.0.1:8080)")
    serve.add_argument("--config", metavar="FILE", help=config_help)
    serve.add_argument("--journal", metavar="PATH",
                       help='the job journal (SQLite; default /var/lib/sandboxd/sandboxd.db), '
                            'or "none" to keep jobs in memory only')
    serve.add_argument("--redis", metavar="URL",
                       help="overrides [queue] redis_url: share queue, results and cache with "
                            "the other daemons using redis://HOST:PORT/DB")
    serve.set_defaults(func=cmd_serve)

    run = sub.add_parser(
        "run", help="run one program in a sandbox and print its result",
        description="Runs FILE once through the same jail as the daemon (no HTTP, no "
                    "queue) and prints the result. Exit status: 0 Accepted, 1 another "
                    "verdict, 2 a usage or set-up error (Internal Error included).")
    run.add_argument("file", metavar="FILE", help="the source ('-': standard input)")
    run.add_argument("--language", "-l", required=True, metavar="ID",
                     help="a language id (`sandboxd languages` lists them)")
    run.add_argument("--stdin", metavar="FILE", help="fed to the program ('-': standard input)")
    run.add_argument("--expected-output", metavar="FILE",
                     help="Accepted needs the output to match it, else Wrong Answer")
    run.add_argument("--time-limit-ms", type=_integer, metavar="N", help="CPU time limit")
    run.add_argument("--wall-time-limit-ms", type=_integer, metavar="N",
                     help="wall-clock limit (default 2 x CPU + 1000)")
    run.add_argument("--memory-limit-mb", type=_integer, metavar="N", help="memory limit")
    run.add_argument("--json", action="store_true", help="print the result as JSON")
    run.add_argument("--config", metavar="FILE", help=config_help)
    run.set_defaults(func=cmd_run)

    langs = sub.add_parser("languages", help="list the configured languages")
    langs.add_argument("--config", metavar="FILE", help=config_help)
    langs.set_defaults(func=cmd_languages)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "run" and args.file == "-" and args.stdin == "-":
        return _fail("FILE and --stdin cannot both be '-' (standard input)")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
