"""The `gatewayd` command line: serve, check, routes, explain, schema.

Exit codes: 0 success, 1 the config has errors (or nothing matches, for `explain`), 2 usage error
or unreadable file.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

SUBCOMMANDS = ("serve", "check", "routes", "explain", "schema")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gatewayd", description="An API gateway configured by one YAML file.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("serve", help="serve a config (the default command)")
    s.add_argument("--config", "-c", default="configs/gateway.yaml", help="config file (default: %(default)s)")
    s.add_argument("--listen", action="append", default=[], metavar="HOST:PORT", help="listen here instead of server.listen (repeatable)")

    c = sub.add_parser("check", help="validate a config; print every error as file:line:col")
    c.add_argument("file")
    c.add_argument("--format", choices=("text", "json", "github"), default="text")

    r = sub.add_parser("routes", help="print the compiled route table")
    r.add_argument("file")
    r.add_argument("--format", choices=("text", "json"), default="text")

    e = sub.add_parser("explain", help="say which route a request would take, and why")
    e.add_argument("file")
    e.add_argument("method")
    e.add_argument("target", help="path, with an optional ?query")
    e.add_argument("-H", "--header", action="append", default=[], metavar="'Name: value'")
    e.add_argument("--format", choices=("text", "json"), default="text")

    sub.add_parser("schema", help="print the config's JSON Schema")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help"):
        argv.insert(0, "serve")  # `gatewayd --config gateway.yaml` serves
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.command == "serve":
        from ..server.supervisor import SIGNALS

        # blocked before any import can start a thread (numpy starts its pool when imported): see
        # supervisor.py. Commands are imported only after this, for the same reason.
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        from ..server.run import serve

        return serve(args.config, args.listen)
    from . import commands

    return getattr(commands, args.command)(args)


if __name__ == "__main__":
    sys.exit(main())
