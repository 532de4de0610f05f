"""The MLflow UI addresses we print ask for the training view of one experiment's runs."""

import json
from urllib.parse import parse_qs, unquote

from components.tracking import compare_url, runs_url


def test_runs_url_names_the_experiment_and_the_training_view():
    url = runs_url("http://127.0.0.1:5000/", "7")
    route, query = url.split("#", 1)[1].split("?")
    assert url.startswith("http://127.0.0.1:5000/#/") and route == "/experiments/7/runs"
    assert parse_qs(query) == {"workflowType": ["machine_learning"]}


def test_compare_url_carries_every_run_as_json():
    url = compare_url("http://h:1", "3", ["a1", "b2", "c3"])
    route, query = url.split("#", 1)[1].split("?")
    fields = {k: v[0] for k, v in parse_qs(query).items()}
    assert route == "/compare-runs"
    assert json.loads(unquote(fields["runs"])) == ["a1", "b2", "c3"]
    assert json.loads(unquote(fields["experiments"])) == ["3"]
    assert fields["workflowType"] == "machine_learning"
