"""An email campaign: a batch of sends with retries, against a fake SMTP server.

The example starts a small SMTP server of its own on 127.0.0.1 (the "outside
world"; it speaks just enough SMTP for smtplib), enqueues one task per
recipient in one go, and lets a LiteQ daemon with 4 worker processes send them
with smtplib. The server behaves like real ones do:

  - some recipients are greylisted: the first try gets "451 try again later";
    the task raises, and LiteQ retries it after a short delay, which succeeds;
  - one mailbox is full, so every try gets a 452: LiteQ retries until
    max_retries is used up, then the task is failed with the server's answer;
  - two addresses do not exist (550): a permanent bounce, so the task does not
    raise (retrying cannot help) and returns the bounce as its result.

At the end it reports how many emails were delivered, retried, bounced and
failed, and checks them against what the server received.

Run it:            python examples/email_campaign.py
The same tasks under the daemon, in production style:
    LITEQ_DB=/tmp/liteq.db liteqd --app examples/email_campaign.py \\
        --queues emails --concurrency 4
(the tasks take the SMTP server's port as an argument; point them at a real
relay by enqueueing send_campaign_email(port, address, first_name)).
"""

import email
import os
import shutil
import smtplib
import socketserver
import tempfile
import threading
import time
from email.message import EmailMessage
from typing import Any

from liteq import task, wait_for_task

SENDER = "news@shop.example.com"
SUBJECT = "Our spring sale starts today"

RECIPIENTS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan",
              "judy", "mallory", "niaj", "olivia", "peggy", "rupert", "sybil", "trent",
              "victor", "walter", "xavier", "yolanda", "zoe", "nobody", "ghost"]
GREYLISTED = {"bob", "grace", "mallory", "trent", "walter"}   # 451 on the first try
MAILBOX_FULL = {"judy"}                                         # 452 on every try
UNKNOWN = {"nobody", "ghost"}                                   # 550: no such user


class TemporaryFailure(Exception):
    """The server said "try again later" (a 4xx reply): raising makes LiteQ retry."""


@task(queue="emails", max_retries=3, retry_delay=0.2, retry_backoff=2.0)
def send_campaign_email(smtp_port: int, to: str, first_name: str) -> dict[str, Any]:
    """Send one campaign email through the SMTP server on 127.0.0.1:smtp_port."""
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = to
    msg["Subject"] = SUBJECT
    msg.set_content(f"Hi {first_name},\n\nEverything is 20% off until Sunday.\n")
    try:
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as smtp:
            smtp.send_message(msg)
    except smtplib.SMTPRecipientsRefused as exc:
        code, text = exc.recipients[to]
        reply = f"{code} {text.decode(errors='replace')}"
        if 400 <= code < 500:
            raise TemporaryFailure(f"{to}: {reply}") from None
        return {"to": to, "delivered": False, "bounce": reply}
    return {"to": to, "delivered": True}


# ---- the fake SMTP server (the outside world; not part of LiteQ) -----------------

class SMTPHandler(socketserver.StreamRequestHandler):
    """One SMTP session: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT."""

    timeout = 10

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        server = self.server
        assert isinstance(server, FakeSMTPServer)
        self.reply("220 fake-smtp.localhost ESMTP ready")
        recipients: list[str] = []
        while True:
            raw = self.rfile.readline(1024)
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip("\r\n")
            verb = line[:4].upper()
            if verb in ("EHLO", "HELO"):
                self.reply("250 fake-smtp.localhost")
            elif verb == "MAIL":
                recipients = []
                self.reply("250 2.1.0 OK")
            elif verb == "RCPT":
                address = line.split(":", 1)[1].strip().strip("<>")
                code, text = server.verdict(address)
                if code == 250:
                    recipients.append(address)
                self.reply(f"{code} {text}")
            elif verb == "DATA":
                if not recipients:
                    self.reply("503 5.5.1 no valid recipients")
                    continue
                self.reply("354 end data with <CR><LF>.<CR><LF>")
                lines: list[bytes] = []
                while True:
                    raw = self.rfile.readline()
                    if not raw:
                        return
                    if raw in (b".\r\n", b".\n"):
                        break
                    lines.append(raw[1:] if raw.startswith(b"..") else raw)
                message = email.message_from_bytes(b"".join(lines))
                number = server.deliver(recipients, message["Subject"])
                self.reply(f"250 2.0.0 OK queued as {number}")
                recipients = []
            elif verb == "RSET":
                recipients = []
                self.reply("250 2.0.0 OK")
            elif verb == "NOOP":
                self.reply("250 2.0.0 OK")
            elif verb == "QUIT":
                self.reply("221 2.0.0 bye")
                return
            else:
                self.reply("502 5.5.2 command not recognized")


class FakeSMTPServer(socketserver.ThreadingTCPServer):
    """A threaded SMTP server on 127.0.0.1 that keeps what it received in memory."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), SMTPHandler)
        self.lock = threading.Lock()
        self.mailbox: list[tuple[str, str]] = []      # (recipient, subject) of every accepted message
        self.refused: list[tuple[str, int]] = []      # (recipient, code) of every refused RCPT
        self.tried: set[str] = set()     # greylisted recipients that already tried once

    @property
    def port(self) -> int:
        return self.server_address[1]

    def verdict(self, address: str) -> tuple[int, str]:
        """The reply code and text for RCPT TO:<address>."""
        user = address.split("@", 1)[0]
        with self.lock:
            if user in UNKNOWN:
                code, text = 550, "5.1.1 no such user here"
            elif user in MAILBOX_FULL:
                code, text = 452, "4.2.2 mailbox full, try again later"
            elif user in GREYLISTED and address not in self.tried:
                self.tried.add(address)
                code, text = 451, "4.7.1 greylisted, please try again later"
            else:
                return 250, "2.1.5 OK"
            self.refused.append((address, code))
        return code, text

    def deliver(self, recipients: list[str], subject: str) -> int:
        with self.lock:
            for r in recipients:
                self.mailbox.append((r, subject))
            return len(self.mailbox)

    def __enter__(self) -> "FakeSMTPServer":
        threading.Thread(target=self.serve_forever, name="fake-smtp", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


# ---- the demo ------------------------------------------------------------------

def main() -> int:
    """Start the fake SMTP server and a daemon, send the campaign, report."""
    from liteq.launcher import start_daemon

    workdir = tempfile.mkdtemp(prefix="liteq-campaign-")
    os.environ.setdefault("LITEQ_DB", os.path.join(workdir, "liteq.db"))
    os.environ["LITEQ_SOCKET"] = os.path.join(workdir, "liteqd.sock")
    print(f"database: {os.environ['LITEQ_DB']}")
    try:
        with FakeSMTPServer() as smtp:
            print(f"fake SMTP server listening on 127.0.0.1:{smtp.port}")
            addresses = [f"{name}@example.com" for name in RECIPIENTS]
            t0 = time.time()
            ids = send_campaign_email.starmap(
                (smtp.port, address, name.capitalize())
                for name, address in zip(RECIPIENTS, addresses))
            print(f"enqueued {len(ids)} emails in one transaction; "
                  f"starting liteqd with 4 worker processes ...")
            with start_daemon(__file__, queues="emails", concurrency=4,
                              log_path=os.path.join(workdir, "liteqd.log")) as daemon:
                results = [wait_for_task(task_id, timeout=30) for task_id in ids]
                retry_events = [e for e in daemon.events() if e["event"] == "task.retrying"]
            elapsed = time.time() - t0

            delivered = [s for s in results if s["status"] == "done" and
                         s["result"]["delivered"]]
            bounced = [s for s in results if s["status"] == "done" and
                       not s["result"]["delivered"]]
            failed = [s for s in results if s["status"] == "failed"]
            retried = [s for s in results if s["attempts"] > 1]

            print(f"\ncampaign finished in {elapsed:.1f} s:")
            print(f"  delivered: {len(delivered):>2}  ({sum(s['attempts'] > 1 for s in delivered)}"
                  f" of them on a retry, after a 451 greylisting reply)")
            print(f"  bounced:   {len(bounced):>2}  (550, permanent: not retried)")
            print(f"  failed:    {len(failed):>2}  (a 4xx on every attempt, retries used up)")
            print(f"  retried:   {len(retried):>2}  tasks, {len(retry_events)} retries in all "
                  f"(task.retrying events in the daemon's log)")
            print("\ndetails:")
            for s in results:
                to = s["args"][1]
                tries = f"{s['attempts']} attempt{'s' if s['attempts'] > 1 else ''}"
                if s["status"] == "failed":
                    print(f"  {to:<22} failed after {tries}: "
                          f"{s['error'].splitlines()[0]}")
                elif not s["result"]["delivered"]:
                    print(f"  {to:<22} bounced after {tries}: {s['result']['bounce']}")
                elif s["attempts"] > 1:
                    print(f"  {to:<22} delivered after {tries}")
            received = sorted(r for r, _ in smtp.mailbox)
            expected = sorted(s["args"][1] for s in delivered)
            verdict = "each delivered email arrived exactly once" if received == expected \
                else "MISMATCH with the task results!"
            print(f"\nthe SMTP server received {len(received)} messages and refused "
                  f"{len(smtp.refused)} RCPT commands; {verdict}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("daemon and SMTP server stopped; done.")
    return 0 if received == expected else 1


if __name__ == "__main__":
    raise SystemExit(main())
