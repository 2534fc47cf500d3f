"""Servers the tests start (webserver, daemon) are stopped by their process group's id."""

import os
import signal
import subprocess


def stop_process_group(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM ``process``'s group (started with ``start_new_session=True``, so its children,
    such as a code server, go too), then SIGKILL after ``grace`` seconds."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
