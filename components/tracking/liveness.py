"""Who owns a RUNNING run, and what happens to runs whose owner died.

A process that is SIGKILLed (or loses its machine) cannot end its MLflow run, so the run would stay
RUNNING forever. Every run we open therefore records its owner — host, pid, the process's start
time (a reused pid is not the same process) — and a heartbeat time refreshed by a daemon thread.
`sweep_dead_runs`, called whenever a command opens the store, marks FAILED every RUNNING run whose
owner is provably dead: in this pid namespace (same machine, boot and container), its process is
gone (or is another process with the same pid); elsewhere, its heartbeat is older than
`STALE_AFTER_S`. The run gets a
`draftedit.failure` tag with the cause and `draftedit.interrupted=true`, which makes it resumable:
a rerun of the same stage with the same config and inputs reopens it (see `find_interrupted`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

TAG_HOST = "draftedit.owner.host"
TAG_PID = "draftedit.owner.pid"
TAG_PIDNS = "draftedit.owner.pidns"  # boot id + pid namespace: where that pid can be looked up
TAG_PROC_START = "draftedit.owner.start"  # the process's start time (clock ticks since boot, Linux)
TAG_HEARTBEAT = "draftedit.heartbeat"  # epoch seconds of the owner's last sign of life
TAG_FAILURE = "draftedit.failure"  # why the run failed, one line
TAG_INTERRUPTED = "draftedit.interrupted"  # "true": the run stopped before its end and can be continued
TAG_RESUMED = "draftedit.resumed_count"  # how many times the run was reopened

HEARTBEAT_SECONDS = 60.0
# A run on another host whose owner has not beaten for 10 intervals is dead (its pid cannot be checked).
STALE_AFTER_S = 10 * HEARTBEAT_SECONDS


def process_start_time(pid: int) -> str | None:
    """Start time of process `pid` (field 22 of /proc/<pid>/stat), or None when it does not exist or is a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    if fields[0] in ("Z", "X"):  # killed, not yet reaped: it will never end its run
        return None
    return fields[19]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pid_namespace() -> str:
    """`<boot id>/<pid namespace>`: processes with the same value see the same pids (same machine, same
    boot, same container). A hostname is not enough: containers on one host may share it. "" off Linux."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def owner_tags() -> dict[str, str]:
    """Tags naming this process as the owner of a run (set them when the run is created or reopened)."""
    pid = os.getpid()
    return {
        TAG_HOST: socket.gethostname(),
        TAG_PIDNS: pid_namespace(),
        TAG_PID: str(pid),
        TAG_PROC_START: process_start_time(pid) or "",
        TAG_HEARTBEAT: f"{time.time():.0f}",
    }


def death_reason(tags: dict[str, str], now: float | None = None, stale_after_s: float = STALE_AFTER_S) -> str | None:
    """Why the owner of a RUNNING run with these tags is dead, or None when it may be alive (or is unknown)."""
    host, pid = tags.get(TAG_HOST), tags.get(TAG_PID)
    if not host or not pid or not pid.isdigit():
        return None  # not opened by draftedit (or by an older version): nothing to judge it by
    here = tags[TAG_PIDNS] == pid_namespace() if tags.get(TAG_PIDNS) else host == socket.gethostname()
    if here:  # its pid can be looked up: alive or not is a fact, not a guess
        started = tags.get(TAG_PROC_START, "")
        if started:
            current = process_start_time(int(pid))
            if current is None:
                return f"its process {pid} on {host} died without ending the run (killed, or the machine restarted)"
            if current != started:
                return (f"its process {pid} on {host} died without ending the run "
                        f"(the pid now belongs to another process)")
            return None
        if not _pid_alive(int(pid)):
            return f"its process {pid} on {host} died without ending the run"
        return None
    beat = tags.get(TAG_HEARTBEAT, "")
    try:
        age = (time.time() if now is None else now) - float(beat)
    except ValueError:
        return None
    if age > stale_after_s:
        return (f"its process {pid} on {host} sent no heartbeat for {age / 60:.0f} min "
                f"(limit {stale_after_s / 60:.0f} min)")
    return None


def mark_interrupted(client, run, reason: str, status: str = "FAILED") -> None:
    """End `run` as FAILED/KILLED with its cause, resumable; the end time is its owner's last heartbeat."""
    run_id = run.info.run_id
    client.set_tag(run_id, TAG_FAILURE, reason)
    client.set_tag(run_id, TAG_INTERRUPTED, "true")
    try:
        end_ms = int(float(run.data.tags.get(TAG_HEARTBEAT, "")) * 1000)
    except ValueError:
        end_ms = int(time.time() * 1000)
    client.set_terminated(run_id, status=status, end_time=max(end_ms, run.info.start_time or 0))


def sweep_dead_runs(client, experiment_ids: list[str], stale_after_s: float = STALE_AFTER_S) -> dict[str, Any]:
    """Mark FAILED every RUNNING run of these experiments whose owner is dead; return them by id (as they
    were found: their tags still name the dead owner and e.g. its Prefect flow run)."""
    runs = client.search_runs(experiment_ids, filter_string="attributes.status = 'RUNNING'", max_results=1000)
    swept = {}
    now = time.time()
    for run in runs:
        reason = death_reason(run.data.tags, now=now, stale_after_s=stale_after_s)
        if reason is None:
            continue
        mark_interrupted(client, run, f"interrupted: {reason}")
        log.warning("run %s (%s) was left RUNNING: %s; marked FAILED", run.info.run_id,
                    run.data.tags.get("draftedit.stage", "?"), reason)
        swept[run.info.run_id] = run
    return swept


def reopen_run(client, run_id: str) -> None:
    """Make an interrupted run RUNNING again, owned by this process (owner tags first: a concurrent sweep
    must never see the old, dead owner on a RUNNING run)."""
    run = client.get_run(run_id)
    for key, value in owner_tags().items():
        client.set_tag(run_id, key, value)
    client.set_tag(run_id, TAG_RESUMED, str(int(run.data.tags.get(TAG_RESUMED, "0")) + 1))
    client.set_tag(run_id, TAG_INTERRUPTED, "false")
    client.set_tag(run_id, TAG_FAILURE, "")
    client.update_run(run_id, status="RUNNING")


class Heartbeat:
    """Refreshes a run's heartbeat tag every `interval_s` from a daemon thread, between start() and stop()
    (or as a context manager)."""

    def __init__(self, client, run_id: str, interval_s: float = HEARTBEAT_SECONDS):
        self.client, self.run_id, self.interval_s = client, run_id, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id[:8]}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.client.set_tag(self.run_id, TAG_HEARTBEAT, f"{time.time():.0f}")
            except Exception as exc:  # noqa: BLE001 - a missed beat must never break the stage
                log.warning("heartbeat of run %s failed: %s", self.run_id, exc)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def find_interrupted(client, experiment_id: str, stage: str, config_hash: str, parent_run_id: str | None = None):
    """The newest interrupted run of `stage` with this config hash (and parent, when given), or None.

    Only runs that stopped before their end (`draftedit.interrupted=true`) qualify; a run that failed on
    an error of its own is not continued silently.
    """
    query = (f"tags.`draftedit.stage` = '{stage}' and tags.`draftedit.config_hash` = '{config_hash}' "
             f"and tags.`{TAG_INTERRUPTED}` = 'true' and attributes.status != 'RUNNING'")
    if parent_run_id:
        query += f" and tags.`mlflow.parentRunId` = '{parent_run_id}'"
    runs = client.search_runs([experiment_id], filter_string=query, order_by=["attributes.start_time DESC"],
                              max_results=50)
    for run in runs:
        if parent_run_id or "mlflow.parentRunId" not in run.data.tags:
            return run
    return None
