"""`liteq grants ROLE`: print the least PostgreSQL privileges an app role needs on
the queue --db (or LITEQ_DB) names, as SQL to run as the tables' owner."""

import argparse
import sys

from .errors import LiteQError


def main(argv: list[str] | None = None) -> int:
    """Entry point of `liteq grants`."""
    parser = argparse.ArgumentParser(
        prog="liteq grants",
        description="Print the GRANT statements an application role needs to enqueue, "
                    "read statuses and results, and cancel tasks on a PostgreSQL queue.")
    parser.add_argument("role", help="the application's PostgreSQL role")
    parser.add_argument("--db", help="the queue's postgresql:// URL (default: LITEQ_DB)")
    args = parser.parse_args(argv)
    from .backends import is_postgres, open_backend
    from .settings import db_path
    target = args.db or db_path()
    if not is_postgres(target):
        print(f"liteq grants: error: {target} is not a postgresql:// URL; on SQLite the "
              f"app needs write access to the database file and its directory "
              f"(see Deployment in the README)", file=sys.stderr)
        return 2
    try:
        backend = open_backend(target)
        try:
            from .backends.postgres import PostgresBackend
            from .backends.postgres.grants import app_grants
            assert isinstance(backend, PostgresBackend)  # is_postgres(target)
            print("\n".join(app_grants(args.role, backend.schema)))
        finally:
            backend.close()
    except LiteQError as exc:
        print(f"liteq grants: error: {exc}", file=sys.stderr)
        return 1
    return 0
