"""`python -m awm_platform.sweeps.daemon STUDY`: the background orchestrator of `awm sweep start --detach`.

It is `awm sweep resume STUDY` with SIGTERM meaning "stop the sweep" (cancel in-flight jobs);
stdout/stderr go to `$AWM_HOME/sweeps/<study>/orchestrator.log`, the pid to `orchestrator.pid`.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from awm_platform.sweeps.commands import resume


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m awm_platform.sweeps.daemon STUDY", file=sys.stderr)
        return 2

    def echo(msg: str) -> None:
        print(f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} {msg}", flush=True)

    result = resume(args[0], echo=echo, install_signal_handlers=True)
    echo(f"orchestrator finished: {getattr(result, 'status', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
