"""The systemd notify protocol (sd_notify), implemented directly: a few datagrams.

READY=1 once the children are up, STATUS= a one-line summary, WATCHDOG=1 from
the main loop at half of WATCHDOG_USEC, RELOADING=1 with MONOTONIC_USEC on
reload, STOPPING=1 on shutdown. NOTIFY_SOCKET is removed from the environment
so the children (and whatever tasks start) never talk to systemd as us.
"""

import os
import socket
import time
from collections.abc import MutableMapping
from typing import TYPE_CHECKING

from .plugins import Plugin

if TYPE_CHECKING:
    from .supervisor import Supervisor


class SystemdNotifier(Plugin):
    """A supervisor plugin; does nothing when not started by systemd with NOTIFY_SOCKET."""

    def __init__(self, environ: MutableMapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = env.pop("NOTIFY_SOCKET", None)
        self.watchdog_s: float | None = None
        usec = env.pop("WATCHDOG_USEC", None)
        wd_pid = env.pop("WATCHDOG_PID", None)
        if usec and (not wd_pid or wd_pid == str(os.getpid())):
            try:
                self.watchdog_s = int(usec) / 1e6 / 2
            except ValueError:
                self.watchdog_s = None
        self.next_watchdog = 0.0
        self.next_status = 0.0
        self.db_down = False       # the database's state in the last STATUS sent
        self.sock: socket.socket | None = None
        if self.address:
            if self.address.startswith("@"):
                self.address = "\0" + self.address[1:]  # abstract namespace
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def send(self, *fields: str) -> bool:
        """Send `KEY=value` lines in one datagram; False when there is no systemd."""
        if self.sock is None or self.address is None:
            return False
        try:
            self.sock.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError:
            return False

    def register(self, sup: "Supervisor") -> None:
        """Hook READY=1 to the moment the children are up."""
        sup.on_ready.append(self._ready)

    def _ready(self, sup: "Supervisor") -> None:
        self.send("READY=1", f"STATUS={self.summary(sup)}", f"MAINPID={os.getpid()}")

    @staticmethod
    def summary(sup: "Supervisor") -> str:
        """One line for `systemctl status`."""
        outage = sup.outage.describe()
        if outage and sup.backend is None:
            return f"waiting for the database: {outage}"
        pools = ", ".join(f"{p.name} {len(p.active)}/{p.size}" for p in sup.pools)
        line = f"{sup.tasks_done} done, {sup.tasks_failed} failed; pools: {pools}"
        return f"{outage}; {line}" if outage else line

    def next_deadline(self) -> float | None:
        """When the next watchdog ping is due (None without a watchdog)."""
        return self.next_watchdog if self.watchdog_s else None

    def on_tick(self, sup: "Supervisor") -> None:
        """Ping the watchdog and refresh STATUS, from the main loop (so a stuck loop
        stops the pings and systemd restarts us). STATUS is refreshed every 5 s, and at
        once when the database goes away or comes back."""
        if self.sock is None:
            return
        now = time.monotonic()
        if self.watchdog_s and now >= self.next_watchdog:
            self.send("WATCHDOG=1")
            self.next_watchdog = now + self.watchdog_s
        down = sup.outage.down
        if now >= self.next_status or down != self.db_down:
            self.send(f"STATUS={self.summary(sup)}")
            self.next_status = now + 5.0
            self.db_down = down

    def on_waiting(self, sup: "Supervisor") -> None:
        """Refresh STATUS while the daemon waits for its database at start-up."""
        self.send(f"STATUS={self.summary(sup)}")

    def on_reloading(self, sup: "Supervisor") -> None:
        """Tell systemd a reload started (Type=notify-reload wants MONOTONIC_USEC)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def on_stopping(self, sup: "Supervisor") -> None:
        """Tell systemd we are stopping."""
        self.send("STOPPING=1", f"STATUS=stopping ({sup.stopping})")

    def close(self) -> None:
        """Close the datagram socket."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
