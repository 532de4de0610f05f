"""Addresses of the MLflow UI pages a user opens after a run.

MLflow 3's UI starts in its GenAI mode, where an experiment opens on a traces overview that our
training runs never fill. `workflowType=machine_learning` in the address switches it to model
training, so each link lands on the runs table or the compare view directly.
"""

from __future__ import annotations

import json
from urllib.parse import quote

TRAINING_VIEW = "workflowType=machine_learning"


def runs_url(base: str, experiment_id: str) -> str:
    """The experiment's runs table: pipeline parents, each with its stage children."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{TRAINING_VIEW}"


def compare_url(base: str, experiment_id: str, run_ids: list[str]) -> str:
    """MLflow's compare view of `run_ids` (parameters and metrics side by side)."""
    runs = quote(json.dumps(list(run_ids)), safe="")
    experiments = quote(json.dumps([experiment_id]), safe="")
    return f"{base.rstrip('/')}/#/compare-runs?runs={runs}&experiments={experiments}&{TRAINING_VIEW}"
