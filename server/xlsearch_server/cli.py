"""`xlsearch serve`: flags -> ServerSettings -> SearchServer, until SIGTERM/SIGINT.

Every setting has a flag named after it (`--max-top-k 50`), an `XLSEARCH_*` variable (`XLSEARCH_MAX_TOP_K=50`)
and a config-file key (`max_top_k = 50`); flags win over variables, variables over the file. Exit codes: 0 after a
clean shutdown, 2 for bad settings, security settings that forbid serving (a non-loopback host without API keys or
--insecure, unreadable key or TLS files) or a bundle/index pair that cannot be served.

`xlsearch serve --new-key ROLE` prints a new random key and its key-file entry; `--hash-key ROLE` reads a key on
stdin and prints its entry (`role:<sha256 hex>`). Neither starts a server.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from xlsearch_server.security import ROLES, key_entry, new_key
from xlsearch_server.settings import ConfigFileError, ServerSettings

log = logging.getLogger("xlsearch_server")
NONE_WORDS = {"none", "off", "null", ""}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="xlsearch serve",
        description="Serve one bundle + index over gRPC (health, reflection, Prometheus metrics).",
        epilog="Every flag can also be set as XLSEARCH_<NAME> or in the --config file.",
    )
    for name, field in ServerSettings.model_fields.items():
        flag = bool in (get_args(field.annotation) or (field.annotation,))
        ap.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=argparse.SUPPRESS,
            metavar=_metavar(field.annotation),
            help=f"{field.description or name} (default: {field.default})",
            **({"nargs": "?", "const": "true"} if flag else {}),  # `--insecure` alone means true
        )
    keys = ap.add_argument_group("API keys (print and exit, no server)")
    keys.add_argument(
        "--new-key",
        metavar="ROLE",
        choices=ROLES,
        help="print a new random key (line 1, give it to the client) and its key-file entry (line 2)",
    )
    keys.add_argument(
        "--hash-key", metavar="ROLE", choices=ROLES, help="read a key on stdin, print its key-file entry"
    )
    return ap


def _metavar(annotation: Any) -> str:
    kinds = [a for a in (get_args(annotation) or (annotation,)) if a is not type(None)]
    names = {bool: "BOOL", int: "N", float: "SECONDS", Path: "PATH"}
    return names.get(kinds[0], "TEXT") if kinds else "TEXT"


def _accepts_none(annotation: Any) -> bool:
    return type(None) in get_args(annotation)


def parse_settings(argv: list[str] | None) -> ServerSettings:
    return settings_from(build_parser().parse_args(argv))


def settings_from(args: argparse.Namespace) -> ServerSettings:
    overrides: dict[str, Any] = {}
    for name, value in vars(args).items():
        if name not in ServerSettings.model_fields:
            continue
        optional = _accepts_none(ServerSettings.model_fields[name].annotation)
        overrides[name] = None if optional and value.strip().lower() in NONE_WORDS else value
    return ServerSettings(**overrides)


async def serve(settings: ServerSettings, **server_kwargs: Any) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or until loading fails (exit 2)."""
    from xlsearch_server.app import SearchServer, ServerStartError

    server = SearchServer(settings, **server_kwargs)
    try:
        await server.start()
    except ServerStartError as e:
        print(f"xlsearch serve: error: {e}", file=sys.stderr)
        await server.stop(0)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopping = asyncio.ensure_future(stop.wait())
    failing = asyncio.ensure_future(server.load_failed.wait())
    await asyncio.wait([stopping, failing], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    failing.cancel()
    if server.load_failed.is_set():
        print(f"xlsearch serve: error: cannot serve: {server.slot.error}", file=sys.stderr)
        await server.stop(0)
        return 2
    log.info("shutting down: finishing in-flight calls for up to %.1fs", settings.grace_seconds)
    await server.stop(settings.grace_seconds)
    return 0


# Loggers of libraries whose INFO lines read like errors: faiss's loader logs, at INFO, every optimised build it
# could not import ("Could not load library with AVX2 support due to: ModuleNotFoundError(...)") before it loads the
# generic one. Its warnings and errors still show; `--log-level debug` shows everything.
QUIET_LOGGERS = ("faiss.loader",)


def configure_logging(settings: ServerSettings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if logging.getLogger().level > logging.DEBUG:  # --log-level debug shows them
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


def key_command(args: argparse.Namespace) -> int:
    """--new-key / --hash-key: the key goes to stdout only (never a log); the entry is safe to store."""
    if args.new_key:
        key = new_key()
        print(key)
        print(key_entry(args.new_key, key))
        return 0
    if sys.stdin.isatty():
        import getpass

        key = getpass.getpass("API key: ")
    else:
        key = sys.stdin.readline()
    try:
        print(key_entry(args.hash_key, key))
    except ValueError as e:
        print(f"xlsearch serve: error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.new_key or args.hash_key:
        return key_command(args)
    try:
        settings = settings_from(args)
    except (ValidationError, ConfigFileError) as e:
        print(f"xlsearch serve: error: bad settings: {e}", file=sys.stderr)
        return 2
    configure_logging(settings)
    from xlsearch_server.app import ServerStartError, load_keys, server_credentials
    from xlsearch_server.service.loading import PairError, check_served

    try:  # the loopback rule and the key/TLS files, before anything is loaded or bound
        load_keys(settings)
        server_credentials(settings)
    except ServerStartError as e:
        print(f"xlsearch serve: error: {e}", file=sys.stderr)
        return 2
    try:
        check_served(settings)
    except PairError as e:
        print(f"xlsearch serve: error: {e}", file=sys.stderr)
        return 2
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    raise SystemExit(main())
