"""The least privileges an application role needs on a LiteQ queue in PostgreSQL.

The daemon's role owns the tables (it creates and migrates them); an app that only
enqueues, reads statuses and results, and cancels its tasks gets just what those
take. `liteq grants ROLE --db URL` prints them.
"""

# table -> privileges the producer side uses, and why.
APP_PRIVILEGES = (
    ("liteq_migrations", "SELECT"),           # the schema version check at connect
    ("tasks", "SELECT, INSERT, UPDATE"),      # enqueue; status and results; cancel
    ("task_deps", "SELECT, INSERT"),          # enqueue with depends_on
    ("schedules", "SELECT"),                  # list_schedules()
    ("workers", "SELECT"),                    # liteqctl status --all, the panel
    ("task_stats", "SELECT, INSERT, UPDATE"),  # a cancel counts itself; /metrics
    ("task_errors", "SELECT, INSERT"),        # get_task_status()'s errors; cancel
)


def app_grants(role: str, schema: str) -> list[str]:
    """The GRANT statements (SQL text, identifiers quoted) for `role` on the LiteQ
    tables of `schema`."""
    def ident(*names: str) -> str:
        return ".".join('"' + n.replace('"', '""') + '"' for n in names)
    lines = [f"GRANT USAGE ON SCHEMA {ident(schema)} TO {ident(role)};"]
    for table, privileges in APP_PRIVILEGES:
        lines.append(f"GRANT {privileges} ON {ident(schema, table)} TO {ident(role)};")
    return lines

