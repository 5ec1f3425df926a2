"""The `liteq` command: worker, scheduler and the other user-facing subcommands."""

import sys

USAGE = """usage: liteq COMMAND [OPTIONS]   (liteq --version: the version)

commands:
  worker      run tasks in the foreground (the liteqd supervisor); see `liteq worker -h`
  scheduler   fire cron schedules without a worker; see `liteq scheduler -h`
  monitor     the web panel and /metrics (needs liteq[web]); see `liteq monitor -h`
  bench       measure enqueue, drain and latency on this machine; see `liteq bench -h`
  grants      print the PostgreSQL grants an app role needs; see `liteq grants -h`
  db          the schema: `liteq db status`, `liteq db upgrade [--sql]`; see `liteq db -h`
  completion  print a shell completion script: `liteq completion bash|zsh`

The daemon for production is `liteqd`; talk to it with `liteqctl`.
"""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `liteq` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] == "--version":
        from .version import __version__
        print(f"liteq {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "worker":
        from .compat import run_daemon
        return run_daemon(rest, prog="liteq worker")
    if command == "bench":
        from .bench import main as bench_main
        return bench_main(rest)
    if command == "monitor":
        from .web.cli import main as monitor_main
        if not {"-h", "--help"} & set(rest):
            # Its server's logs as the daemon's structured events (LITEQ_LOG_FORMAT).
            from .compat import route_uvicorn_logs
            route_uvicorn_logs()
        return monitor_main(rest)
    if command == "grants":
        from .grants import main as grants_main
        return grants_main(rest)
    if command == "db":
        from .dbcli import main as db_main
        return db_main(rest)
    if command == "completion":
        from .compat import completion_main
        return completion_main(rest, prog="liteq completion")
    if command == "scheduler":
        from .compat import scheduler_main
        return scheduler_main(rest)
    print(f"liteq: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
