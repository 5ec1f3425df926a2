"""liteqd: the LiteQ supervisor daemon (forked worker pool, control socket, scheduler)."""
