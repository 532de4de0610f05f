"""Shared fixtures. Kept minimal: every area's tests import this file.

- `prefect_harness`: one Prefect test server for the whole session (started only if a test asks).
- `mlflow_uri`: a per-test SQLite MLflow store, copied from one database migrated once per session.
- `tiny_lm`: builds the small seeded networks of the model-level tests.
- `random_checkpoint`: a saved random tiny network with its tokenizer, for benchmarks and loaders.
"""

from __future__ import annotations

import os
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch

# Offline and quiet before anything imports Prefect; an explicit environment still wins.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


@contextmanager
def _reserved_local_port():
    """A free port on 127.0.0.1, held until the block ends: bound with SO_REUSEADDR but not listening, so
    uvicorn (which binds with SO_REUSEADDR) can take it, while the kernel gives it to no one else: not to
    another bind to port 0 (a second copy of the suite), not to a probe like Prefect's, not as the local
    port of an outgoing connection."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_harness():
    """A session-wide Prefect test server on a temporary database (generous start-up on CI), on a port
    reserved for it.

    Prefect's harness picks a free port and lets go of it; its server binds the port only after the app
    has started (seconds, more under load), and when that bind fails Prefect probes 8000-9000 for another,
    where a second suite's server can answer the health check in place of ours. Here the port stays
    reserved until the server holds it, and a server that still ended up elsewhere is stopped and started
    again on a new reserved port.
    """
    import prefect.testing.utilities as prefect_testing
    from prefect.settings import PREFECT_API_URL

    timeout = 300 if os.environ.get("CI") else 180
    attempts = 3
    for _ in range(attempts):
        with _reserved_local_port() as port, pytest.MonkeyPatch.context() as patch:
            patch.setattr(prefect_testing, "_find_available_port", lambda: port)  # the harness's port choice
            with prefect_testing.prefect_test_harness(server_startup_timeout=timeout):
                if urlsplit(PREFECT_API_URL.value()).port == port:
                    yield
                    return
    raise RuntimeError(f"the Prefect test server did not start on its reserved port ({attempts} attempts)")


@pytest.fixture(scope="session")
def _mlflow_template_db(tmp_path_factory) -> Path:
    """One SQLite MLflow store with every migration applied; tests get copies of it."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}")
    client.search_experiments()  # creating the store runs the migrations
    # Dispose the engine so the file is complete and unlocked before it is copied.
    store = client._tracking_client.store
    if hasattr(store, "engine"):
        store.engine.dispose()
    return path


@pytest.fixture
def mlflow_uri(_mlflow_template_db, tmp_path) -> str:
    """A fresh SQLite tracking URI for this test (a copy of the migrated template)."""
    target = tmp_path / "mlflow.db"
    shutil.copyfile(_mlflow_template_db, target)
    return f"sqlite:///{target}"


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): tiny
    matmuls on a few busy cores shared by several processes run much faster single-threaded, as the
    threads no longer wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tokenizer_folder(tmp_path_factory) -> Path:
    """A folder holding a small trained tokenizer (the tokenizer part of a checkpoint folder)."""
    from components.data.bpe import train_bpe_tokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    texts = [f"{i} + {i + 1} = {2 * i + 1}; sort {i} {i % 7} {i % 3}" for i in range(300)]
    train_bpe_tokenizer(texts, vocab_size=320, min_frequency=1).save(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_lm():
    """A factory of small dense networks: `tiny_lm(seed=0, **fields)` seeds torch, then builds
    `DiffusionLM(ModelConfig.tiny(...))` with 2 layers, 2 attention heads and 1 KV head, and the sizes and
    token ids the caller names (each test file keeps its own, so the figures it asserts stay the same)."""
    from model import DiffusionLM, ModelConfig

    def make(seed: int = 0, **fields):
        torch.manual_seed(seed)
        layout = {"num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1}
        return DiffusionLM(ModelConfig.tiny(**{**layout, **fields}))

    return make


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint folder with a random tiny network and a tokenizer trained on a few synthetic examples:
    what benchmarks and loaders need when the scores do not matter. Read it; never write into it."""
    from components.data.bpe import train_bpe_tokenizer
    from components.families import get_family
    from model import DiffusionLM, ModelConfig

    texts = [f"{e.prompt}\n{e.answer}" for n in ("sum", "sort") for e in get_family(n).make("train", 30, 0)]
    tok = train_bpe_tokenizer(texts, vocab_size=320)
    torch.manual_seed(0)
    cfg = ModelConfig.tiny(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=1024,
                           mask_token_id=tok.mask_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    path = tmp_path_factory.mktemp("random_checkpoint")
    DiffusionLM(cfg).save_pretrained(path)
    tok.save(path)
    return path
