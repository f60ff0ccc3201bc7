"""`awm ui` itself: what it starts, where it listens, what it keeps out of argv."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil

from tests.ui.conftest import TRACKING_URI, Seeded, UiServer

AWM = str(Path(sys.executable).parent / "awm")


def test_serves_on_127_0_0_1_by_default_with_the_urls_out_of_argv(ui_server: UiServer, seeded: Seeded) -> None:
    proc = psutil.Process(ui_server.proc.pid)  # exec'd: the pid `awm ui` had is Streamlit's
    listening = [c for p in (proc, *proc.children(recursive=True)) for c in p.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening and {c.laddr.ip for c in listening} == {"127.0.0.1"}
    assert {c.laddr.port for c in listening} == {ui_server.port}
    argv = " ".join(proc.cmdline())
    assert "streamlit run" in argv and "platform/ui/app.py" in argv and "--server.address 127.0.0.1" in argv
    assert seeded.url not in argv and TRACKING_URI not in argv and "5999" not in argv
    env = proc.environ()
    assert env["AWM_UI_DB_URL"] == seeded.url and env["AWM_UI_TRACKING_URI"] == TRACKING_URI
    with urllib.request.urlopen(ui_server.base_url + "/", timeout=10) as r:
        assert r.status == 200


def test_a_port_in_use_is_one_error_line(ui_server: UiServer, seeded: Seeded) -> None:
    out = subprocess.run([AWM, "ui", "--port", str(ui_server.port), "--db", seeded.url], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "AWM_HOME": str(seeded.home)}, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip() == f"error: cannot listen on 127.0.0.1:{ui_server.port}: already in use (another " \
                                 "`awm ui`? pick another --port)"
