"""Model registry: every pipeline's final model becomes a new version; it also takes the alias
`champion` when it beats the current champion on the configured metric (aliases, not stages).

MLflow reserves the alias name `latest`, because `models:/<name>/latest` already always resolves to
the newest version; we address it that way and also set the alias `newest` so the UI shows it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .store import TrackingError

ALIAS_LATEST = "newest"  # `latest` is reserved by MLflow (models:/<name>/latest)
ALIAS_CHAMPION = "champion"
TAG_CHECKPOINT = "draftedit.checkpoint_uri"
TAG_SCORE = "draftedit.score"


@dataclass
class Registration:
    name: str
    version: str
    score: float
    champion: bool  # this version now holds the champion alias
    previous_champion: str | None  # version that held it before (None: there was none)
    previous_score: float | None


def _version_by_alias(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def is_better(score: float, than: float | None, greater_is_better: bool = True) -> bool:
    """Strictly better (a tie keeps the current champion); anything beats a missing score."""
    if than is None:
        return True
    return score > than if greater_is_better else score < than


def register_model(
    client,
    name: str,
    model_uri: str,
    run_id: str,
    metric: str,
    greater_is_better: bool = True,
    checkpoint_uri: str | None = None,
) -> Registration:
    """Register `model_uri` (logged by `run_id`) as a new version of `name` and move the aliases.

    The score is `metric` of `run_id`; the champion's score is the same metric of its own run.
    """
    from mlflow.exceptions import MlflowException

    run = client.get_run(run_id)
    if metric not in run.data.metrics:
        available = ", ".join(sorted(run.data.metrics)) or "none"
        raise TrackingError(f"run {run_id} has no metric {metric!r} to rank models by (it has: {available})")
    score = float(run.data.metrics[metric])
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="draftedit models; see aliases latest and champion")
    tags = {TAG_SCORE: f"{score:.6g}", "draftedit.metric": metric}
    if checkpoint_uri:
        tags[TAG_CHECKPOINT] = checkpoint_uri
    model_id = model_uri[len("models:/"):] if model_uri.startswith("models:/m-") else None
    version = client.create_model_version(name, source=model_uri, run_id=run_id, tags=tags, model_id=model_id)

    champion = _version_by_alias(client, name, ALIAS_CHAMPION)
    previous_score = None
    if champion is not None:
        champ_metrics = client.get_run(champion.run_id).data.metrics if champion.run_id else {}
        previous_score = champ_metrics.get(metric)
    better = is_better(score, previous_score, greater_is_better)
    client.set_registered_model_alias(name, ALIAS_LATEST, version.version)
    if better:
        client.set_registered_model_alias(name, ALIAS_CHAMPION, version.version)
    return Registration(
        name=name,
        version=str(version.version),
        score=score,
        champion=better,
        previous_champion=None if champion is None else str(champion.version),
        previous_score=previous_score,
    )


def resolve_alias(client, name: str, alias: str = ALIAS_CHAMPION):
    """The model version holding `alias`, or TrackingError saying none does."""
    version = _version_by_alias(client, name, alias)
    if version is None:
        raise TrackingError(
            f"registered model {name!r} has no version with alias {alias!r}; run the pipeline first "
            f"(it registers the final model) or set the alias in the MLflow UI"
        )
    return version
