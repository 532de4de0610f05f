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
# The champion this version was compared with when it was created (absent: there was none).
TAG_PREVIOUS_CHAMPION = "draftedit.previous_champion"
TAG_PREVIOUS_SCORE = "draftedit.previous_score"


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


def version_of_run(client, name: str, run_id: str):
    """The newest version of `name` registered from `run_id` (by an attempt that died), or None."""
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return max(versions, key=lambda v: int(v.version), default=None)


def _champion_score(client, champion, metric: str) -> float | None:
    champ_metrics = client.get_run(champion.run_id).data.metrics if champion.run_id else {}
    return champ_metrics.get(metric)


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

    Idempotent per run, so a resumed run (same run id) registers once: when `name` already has a version
    of `run_id` (the process died after creating it), that version is reused and the alias moves are
    finished. The champion it was compared with is recorded in its tags when it is created: if it already
    holds the champion alias (the process died after moving it), it must not be compared with itself, so
    it reports champion True and that recorded previous champion and score; otherwise it is compared with
    the current champion, as a new version would be.
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
    champion = _version_by_alias(client, name, ALIAS_CHAMPION)
    version = version_of_run(client, name, run_id)
    if version is not None and champion is not None and str(champion.version) == str(version.version):
        # The killed attempt already made it champion: report the comparison it recorded.
        recorded_score = version.tags.get(TAG_PREVIOUS_SCORE)
        better, previous_champion = True, version.tags.get(TAG_PREVIOUS_CHAMPION)
        previous_score = None if recorded_score is None else float(recorded_score)
    else:
        previous_champion = None if champion is None else str(champion.version)
        previous_score = None if champion is None else _champion_score(client, champion, metric)
        better = is_better(score, previous_score, greater_is_better)
    if version is None:
        tags = {TAG_SCORE: f"{score:.6g}", "draftedit.metric": metric}
        if checkpoint_uri:
            tags[TAG_CHECKPOINT] = checkpoint_uri
        if previous_champion is not None:
            tags[TAG_PREVIOUS_CHAMPION] = previous_champion
        if previous_score is not None:
            tags[TAG_PREVIOUS_SCORE] = repr(float(previous_score))
        model_id = model_uri[len("models:/"):] if model_uri.startswith("models:/m-") else None
        version = client.create_model_version(name, source=model_uri, run_id=run_id, tags=tags, model_id=model_id)

    client.set_registered_model_alias(name, ALIAS_LATEST, version.version)
    if better:
        client.set_registered_model_alias(name, ALIAS_CHAMPION, version.version)
    return Registration(
        name=name,
        version=str(version.version),
        score=score,
        champion=better,
        previous_champion=previous_champion,
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
