"""Prefect flows and the `draftedit` command: thin wiring of components into tracked runs."""
