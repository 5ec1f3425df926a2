"""Who may change the schema: LITEQ_NO_DDL leaves it to `liteq db upgrade`.

Both backends' ensure_schema() ask here before they create or migrate anything,
and build their refusal with not_ready(), so the error reads the same on each.
"""

from __future__ import annotations

from .. import settings
from ..errors import SchemaNotReady


def ddl_allowed(allow_ddl: bool | None = None) -> bool:
    """May this process create or migrate the tables? `allow_ddl` when given (True for
    `liteq db upgrade`), else not when LITEQ_NO_DDL is set."""
    return (not settings.no_ddl()) if allow_ddl is None else allow_ddl


def not_ready(where: str, version: int, needed: int) -> SchemaNotReady:
    """The error for tables that are missing (version 0) or at an older version, when
    DDL is not allowed here."""
    state = ("has no LiteQ tables" if version == 0
             else f"has the LiteQ tables at schema version {version}")
    return SchemaNotReady(
        f"{where} {state}, this LiteQ needs version {needed}, and {settings.NO_DDL_ENV} "
        f"forbids creating or migrating them here: run `liteq db upgrade` against it "
        f"(or `liteq db upgrade --sql` for the SQL to hand to a DBA)")
