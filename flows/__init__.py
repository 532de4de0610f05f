"""Prefect flows and the `draftedit` command: thin wiring of components into tracked runs."""

from . import prefect_server as _prefect_server  # noqa: F401 - forked children exit cleanly after a flow ran
