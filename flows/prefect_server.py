"""Prefect and the processes around it: the ephemeral API server dies with its parent (even after a
SIGKILL), dead flow runs become Crashed, and forked children exit cleanly.

Without a configured `PREFECT_API_URL`, Prefect starts a temporary API server (a uvicorn
subprocess) the first time a flow needs one and stops it at exit. A SIGKILLed `draftedit run` or
`draftedit pipeline` never reaches that exit, and the server would run on, orphaned, forever.
`start_ephemeral_server` starts that same server early, from the main thread, with Linux's
parent-death signal set in the child: when the parent process dies, however it dies, the kernel
sends the server SIGTERM and uvicorn shuts down. Prefect then reuses this server (it keeps one
instance per process).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading

_PR_SET_PDEATHSIG = 1


def _drop_prefect_exit_hooks() -> None:
    """In a forked child: forget the exit hooks of Prefect's log and event workers.

    Once a flow has run in a process, Prefect's API log and event workers are registered as
    `threading` exit hooks. A child forked later (DataLoader workers, torchmetrics or DDP processes)
    inherits the hooks but not the workers' threads; at its exit the hooks fail (an AssertionError in
    `_QueueServiceBase.drain`) and the child ends with code 1 after doing its work, which a DataLoader
    reports as "worker exited unexpectedly". The child has nothing of Prefect's to drain.
    """
    hooks = getattr(threading, "_threading_atexits", None)
    if hooks:
        hooks[:] = [hook for hook in hooks
                    if not getattr(getattr(hook, "func", hook), "__module__", "").startswith("prefect.")]


_forks_registered = False


def exit_forks_cleanly() -> None:
    """From now on, forked children drop Prefect's exit hooks (see `_drop_prefect_exit_hooks`); once per process."""
    global _forks_registered
    if not _forks_registered:
        os.register_at_fork(after_in_child=_drop_prefect_exit_hooks)
        _forks_registered = True


def _die_with_parent() -> None:
    """In the child, between fork and exec: ask for SIGTERM when the parent dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def start_ephemeral_server():
    """Start Prefect's ephemeral server now, bound to this process's life; return it, or None when
    Prefect will not use one (an API URL is configured, ephemeral mode is off, or not on Linux)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value() or not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        # The parent-death signal follows the thread that forked: a worker thread's exit would kill the server.
        return None
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the instance Prefect's clients use
    if server.running:
        return server
    launch = server._run_uvicorn_command

    def launch_bound_to_parent():
        popen = subprocess.Popen

        def popen_with_pdeathsig(*args, **kwargs):
            kwargs.setdefault("preexec_fn", _die_with_parent)
            return popen(*args, **kwargs)

        subprocess.Popen = popen_with_pdeathsig  # only for Prefect's one Popen call, on the main thread
        try:
            return launch()
        finally:
            subprocess.Popen = popen

    server._run_uvicorn_command = launch_bound_to_parent
    server.start()
    return server


def mark_flow_runs_crashed(reasons: dict[str, str]) -> None:
    """Set the Prefect flow runs `reasons` names (flow run id -> cause) to Crashed, when not yet final.

    A SIGKILLed flow cannot report its end, so Prefect would show it Running forever; this is called
    for the flow runs of the MLflow runs the liveness sweep found dead, with the same cause.
    """
    if not reasons:
        return
    import logging

    from prefect import get_client
    from prefect.states import Crashed

    try:
        with get_client(sync_client=True) as client:
            for flow_run_id, reason in reasons.items():
                state = client.read_flow_run(flow_run_id).state
                if state is None or not state.is_final():
                    client.set_flow_run_state(flow_run_id, Crashed(message=reason), force=True)
    except Exception as exc:  # noqa: BLE001 - Prefect's record is secondary to MLflow's; never block a command
        logging.getLogger(__name__).warning("could not mark Prefect flow runs %s crashed: %s", sorted(reasons), exc)
