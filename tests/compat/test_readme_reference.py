"""The README's reference says what the commands do: every flag in the usage blocks,
every table in the PostgreSQL list, every field of the daemon's events, every exit
code, and install lines that install this LiteQ (PyPI's `liteq` is the earlier
0.2.1, so `pip install 'liteq[...]'` would not)."""

import ast
import re
from pathlib import Path

from liteqd import config, ctl
from liteq.backends.postgres import schema as pg_schema

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _section(title):
    """The README text from the heading `title` to the next heading of any level."""
    start = README.index(f"\n{title}\n")
    end = README.find("\n#", start + len(title) + 2)
    return README[start:end if end > 0 else None]


def _flags(parser):
    return {opt for action in parser._actions for opt in action.option_strings
            if opt.startswith("--") and opt not in ("--help", "--version")}


def test_the_liteqd_usage_block_lists_every_flag():
    usage = _section("### liteqd").split("```")[1]
    missing = sorted(f for f in _flags(config.build_parser()) if f not in usage)
    assert not missing, f"the liteqd usage block lacks {missing}"


def test_the_liteq_monitor_usage_lists_every_flag():
    from liteq.web import cli as web_cli
    line = next(x for x in _section("### liteq").splitlines() if "`liteq monitor" in x)
    missing = sorted(f for f in _flags(web_cli.build_parser()) if f not in line)
    assert not missing, f"the liteq monitor usage lacks {missing}"


def test_the_postgresql_table_list_names_every_table():
    created = set(re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)",
                             Path(pg_schema.__file__).read_text()))
    listed = _section("### PostgreSQL quick start")
    missing = sorted(t for t in created if f"`{t}`" not in listed)
    assert not missing, f"the PostgreSQL table list lacks {missing}"


def _daemon_events():
    """{event: the fields the daemon logs with it} for every daemon.* event in liteqd/."""
    events = {}
    for path in (ROOT / "liteqd").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            names = [a.value for a in node.args[:2]
                     if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            for name in names:
                if name.startswith("daemon."):
                    events.setdefault(name, set()).update(
                        k.arg for k in node.keywords if k.arg)
    return events


def test_the_log_event_table_lists_every_field_of_the_daemon_events():
    events = _daemon_events()
    assert {"daemon.starting", "daemon.ready", "daemon.stopped"} <= set(events)
    rows = [line for line in _section("### Log events").splitlines() if line.startswith("|")]
    for event, fields in sorted(events.items()):
        row = next((r for r in rows if f"`{event}`" in r), None)
        assert row is not None, f"the log event table has no row for {event}"
        described = row.split("|")[2]
        missing = sorted(f for f in fields if f not in described)
        assert not missing, f"the README's row for {event} lacks {missing}"


def test_the_liteqctl_exit_codes_include_usage_errors():
    text = _section("### liteqctl")
    codes = text[text.index("Exit codes:"):].split(".")[0]
    for code in (ctl.EXIT_OK, ctl.EXIT_ERROR, 2, ctl.EXIT_NO_DAEMON):   # 2: argparse
        assert f"{code} " in codes, f"the liteqctl exit codes lack {code}: {codes!r}"


def test_install_lines_install_this_liteq_not_the_earlier_one_on_pypi():
    assert not re.search(r"pip install '?liteq\[", README), \
        "`pip install 'liteq[...]'` installs PyPI's liteq 0.2.1; from a checkout it is " \
        "pip install -e '.[...]'"
