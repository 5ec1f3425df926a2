"""SQL pieces both backends build the same way (only the driver's placeholder differs)."""


def equal_filters(placeholder, **columns):
    """A WHERE clause and its parameters for the columns given a value (None = any);
    placeholder is the driver's parameter mark ('?' or '%s')."""
    where = [f"{col} = {placeholder}" for col, val in columns.items() if val is not None]
    params = [val for val in columns.values() if val is not None]
    return ("WHERE " + " AND ".join(where)) if where else "", params
