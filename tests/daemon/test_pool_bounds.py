"""A typo must not fork-bomb the machine: pool sizes are bounded."""

from liteq import control
from liteq.launcher import start_daemon

import pytest

APP = "from liteq import task\n@task\ndef noop():\n    pass\n"


def test_scale_beyond_the_bound_is_refused_and_the_pool_is_unchanged(db, tmp_path):
    app = tmp_path / "limits_app.py"
    app.write_text(APP)
    with start_daemon(str(app), concurrency=1, log_path=str(tmp_path / "d.log")):
        with pytest.raises(control.ControlError, match="from 0 to 512"):
            control.scale(100000)
        with pytest.raises(control.ControlError, match="from 0 to 512"):
            control.scale(513)
        pool = control.status(include_queues=False)["pools"][0]
        assert pool["size"] == 1 and len(pool["children"]) == 1
        assert control.ping()["pong"] is True
