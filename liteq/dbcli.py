"""`liteq db`: the schema's version, and its upgrade, as an operator's explicit step.

    liteq db status  [--db URL] [--json]     current and target version
    liteq db upgrade [--db URL] [--json]     apply the pending migrations
    liteq db upgrade --sql [--db URL]        print the SQL for a DBA, apply nothing

Exit codes: 0 done (status: whatever the version), 1 the database cannot be used,
2 a bad command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .errors import ConfigError, LiteQError

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `liteq db`."""
    p = argparse.ArgumentParser(
        prog="liteq db", description="The queue database's schema: show its version, or "
        "upgrade it (the step LITEQ_NO_DDL leaves to the operator).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser("status", help="the schema's current version and the one this "
                                      "LiteQ needs")
    s.add_argument("--db", help="the queue database: a file path or a URL [LITEQ_DB]")
    s.add_argument("--json", action="store_true", help="print JSON")
    s = sub.add_parser("upgrade", help="apply the pending migrations (creates the tables "
                                       "of a new database); LITEQ_NO_DDL does not stop it")
    s.add_argument("--db", help="the queue database: a file path or a URL [LITEQ_DB]")
    s.add_argument("--sql", action="store_true",
                   help="print the SQL of the upgrade instead of applying it (for a DBA)")
    s.add_argument("--json", action="store_true", help="print JSON")
    return p


def render_status(st: dict[str, Any]) -> str:
    """The human-readable `liteq db status`."""
    where = st["database"] + (f" (schema {st['schema']})" if st.get("schema") else "")
    lines = [f"database  {where}", f"backend   {st['backend']}",
             f"version   {st['version']}" + ("" if st["exists"] else " (no database yet)"),
             f"target    {st['target']}"]
    if st.get("newer"):
        lines.append("state     newer than this LiteQ understands: upgrade LiteQ")
    elif st["up_to_date"]:
        lines.append("state     up to date")
    else:
        lines.append(f"state     {len(st['pending'])} migration(s) pending "
                     f"({', '.join(map(str, st['pending']))}): run `liteq db upgrade`")
    return "\n".join(lines)


def render_sql(st: dict[str, Any], statements: list[str]) -> str:
    """The upgrade's SQL as a script, one statement per line group, `;`-terminated."""
    if not statements:
        return f"-- {st['database']} is at schema version {st['version']}: nothing to apply"
    head = [f"-- LiteQ schema upgrade of {st['database']} ({st['backend']}): "
            f"version {st['version']} -> {st['target']}",
            "-- Review, then apply in one go (it is one transaction)."]
    if any("liteq_seed_epoch" in s for s in statements):
        head.append("-- NOTE: converting liteq 0.2's text times calls a function only "
                    "LiteQ defines; apply this one with `liteq db upgrade`.")
    return "\n".join(head + [s.rstrip(";") + ";" for s in statements])


def run(args: argparse.Namespace) -> int:
    """Carry out one `liteq db` command; returns the exit code."""
    from .backends import migrations
    if args.command == "status":
        st = migrations.status(args.db)
        print(json.dumps(st, indent=2) if args.json else render_status(st))
    elif args.sql:
        st, statements = migrations.upgrade_sql(args.db)
        if args.json:
            print(json.dumps({**st, "statements": statements}, indent=2))
        else:
            print(render_sql(st, statements))
    else:
        done = migrations.upgrade(args.db)
        if args.json:
            print(json.dumps(done, indent=2))
        elif done["applied"]:
            print(f"upgraded {done['database']} ({done['backend']}): schema version "
                  f"{done['from']} -> {done['to']}")
        else:
            print(f"{done['database']} ({done['backend']}) is already at schema version "
                  f"{done['to']}: nothing to do")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of `liteq db`."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ConfigError as exc:
        print(f"liteq db: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (LiteQError, OSError) as exc:
        print(f"liteq db: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
