"""MLflow tracking: one run per invocation, named after the run directory.

A plain folder as ``mlflow.uri`` (the default ``./experiments_outputs/mlruns``) becomes a local
SQLite store ``<folder>/mlflow.db`` with artifacts in ``<folder>/artifacts`` (MLflow's file store is
in maintenance mode). Any URI with a scheme (``sqlite:``, ``http:``, ...) is used as given.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

from segzoo.config.loading import flatten, redact

logger = logging.getLogger(__name__)

_MAX_PARAM_CHARS = 6000
_METRIC_NAME = re.compile(r"[^\w\-. /:]")


def resolve_store(uri: str) -> tuple[str, str | None]:
    """(tracking URI, artifact root or None) for a configured ``mlflow.uri``."""
    if re.match(r"^[a-zA-Z][\w+.-]*://", uri) or uri.startswith(("sqlite:", "databricks")):
        return uri, None
    folder = Path(uri).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()


def metric_name(name: str) -> str:
    """A name MLflow accepts (letters, digits, _ - . space / :)."""
    return _METRIC_NAME.sub("_", name)


class Tracker:
    """An MLflow run as a context manager; with ``enabled=False`` every call is a no-op."""

    def __init__(self, uri: str, experiment: str, run_name: str, *, enabled: bool = True,
                 log_models: bool = False) -> None:
        self.uri, self.experiment, self.run_name = uri, experiment, run_name
        self.enabled, self.log_models = enabled, log_models
        self._client = None
        self._run_id: str | None = None

    def __enter__(self) -> Tracker:
        if not self.enabled:
            return self
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):  # MLflow sets its own level on import
            logging.getLogger(name).setLevel(logging.WARNING)

        tracking_uri, artifact_root = resolve_store(self.uri)
        self._client = MlflowClient(tracking_uri=tracking_uri)
        experiment = self._client.get_experiment_by_name(self.experiment)
        experiment_id = (experiment.experiment_id if experiment else
                         self._client.create_experiment(self.experiment, artifact_location=_artifacts_for(
                             artifact_root, self.experiment)))
        run = self._client.create_run(experiment_id, run_name=self.run_name)
        self._run_id = run.info.run_id
        logger.info("MLflow run %r in experiment %r (%s)", self.run_name, self.experiment, self.uri)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._client and self._run_id:
            self._client.set_terminated(self._run_id, status="FAILED" if exc_type else "FINISHED")

    @property
    def active(self) -> bool:
        """Whether calls reach MLflow."""
        return self._run_id is not None

    def log_config(self, config: dict[str, Any]) -> None:
        """Log the flattened config as params, secrets redacted."""
        if not self.active:
            return
        from mlflow.entities import Param

        params = [Param(k, str(v)[:_MAX_PARAM_CHARS]) for k, v in flatten(redact(config)).items()]
        for start in range(0, len(params), 100):
            self._client.log_batch(self._run_id, params=params[start:start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log finite numeric metrics (others are skipped)."""
        if not self.active:
            return
        from mlflow.entities import Metric
        import time

        now = int(time.time() * 1000)
        rows = [Metric(metric_name(k), float(v), now, step or 0) for k, v in metrics.items()
                if isinstance(v, (int, float)) and math.isfinite(float(v))]
        for start in range(0, len(rows), 1000):
            self._client.log_batch(self._run_id, metrics=rows[start:start + 1000])

    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None:
        """Upload a file or folder if it exists."""
        path = Path(path)
        if not self.active or not path.exists():
            return
        if path.is_dir():
            self._client.log_artifacts(self._run_id, str(path), subdir)
        else:
            self._client.log_artifact(self._run_id, str(path), subdir)

    def log_model_file(self, path: str | Path) -> None:
        """Upload a model file when ``mlflow.log_models`` is set."""
        if self.log_models:
            self.log_artifact(path, "models")

    def set_tag(self, key: str, value: str) -> None:
        """Tag the run."""
        if self.active:
            self._client.set_tag(self._run_id, key, value)


def _artifacts_for(artifact_root: str | None, experiment: str) -> str | None:
    if artifact_root is None:
        return None
    return f"{artifact_root}/{re.sub(r'[^A-Za-z0-9_.-]', '_', experiment)}"
