"""Command line: `sandboxd serve`, `sandboxd languages`."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from sandboxd import __version__
from sandboxd.config import ConfigError, load

# What building a box needs from the host: namespaces and mounts (SYS_ADMIN), id maps
# and the box uid (SETUID/SETGID), cgroup files and /proc of other processes
# (DAC_OVERRIDE, SYS_PTRACE for /proc/<pid>/uid_map of the box), killing boxes (KILL).
REQUIRED_CAPS = {"CAP_SYS_ADMIN": 21, "CAP_SETUID": 7, "CAP_SETGID": 6,
                 "CAP_DAC_OVERRIDE": 1, "CAP_KILL": 5}


def missing_capabilities() -> list[str]:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                effective = int(line.split()[1], 16)
                return [name for name, bit in REQUIRED_CAPS.items() if not effective >> bit & 1]
    return list(REQUIRED_CAPS)


def _fail(message: str) -> int:
    print(f"sandboxd: {message}", file=sys.stderr)
    return 2


def cmd_serve(args: argparse.Namespace) -> int:
    from sandboxd import server  # noqa: PLC0415 - keep `sandboxd --help` fast

    missing = missing_capabilities()
    if os.geteuid() != 0 or missing:
        return _fail("must run as root (or with " + ", ".join(missing or REQUIRED_CAPS)
                     + "): sandboxes are built from namespaces, mounts and cgroups")
    try:
        config = load(args.config)
        from dataclasses import replace  # noqa: PLC0415

        if args.listen:
            config = replace(config, server=replace(config.server, listen=args.listen))
        if args.journal is not None:
            if not args.journal:
                raise ConfigError('--journal: expected a file path, or "none"')
            config = replace(config, server=replace(config.server, journal=args.journal))
        server.parse_listen(config.server.listen)
    except (ConfigError, server.StartupError) as e:
        return _fail(str(e))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    import uvloop  # noqa: PLC0415

    try:
        uvloop.run(server.serve(config))
    except server.StartupError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        pass
    return 0


def cmd_languages(args: argparse.Namespace) -> int:
    from sandboxd import languages  # noqa: PLC0415

    try:
        config = load(args.config)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sandboxd", description="code-execution sandbox")
    parser.add_argument("--version", action="version", version=f"sandboxd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the HTTP API")
    serve.add_argument("--listen", metavar="HOST:PORT", help="default 127.0.0.1:8080")
    serve.add_argument("--config", metavar="FILE", help="TOML configuration file")
    serve.add_argument("--journal", metavar="PATH",
                       help='the job journal (SQLite; default /var/lib/sandboxd/sandboxd.db), '
                            'or "none" to keep jobs in memory only')
    serve.set_defaults(func=cmd_serve)
    langs = sub.add_parser("languages", help="list the configured languages")
    langs.add_argument("--config", metavar="FILE")
    langs.set_defaults(func=cmd_languages)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
