"""What the model-server tests share: a small pyfunc model, an in-process app, a real server in a thread."""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from types import SimpleNamespace

from components.serving import ModelServer, ServeConfig, serving_in_thread
from components.tracking.pyfunc import DraftEditModel
from pipeline_support import make_checkpoint

MODEL_NAME = "tiny-draftedit"


def load_model(folder) -> DraftEditModel:
    """The pyfunc over a random 2-layer checkpoint (tests/pipeline_support.py), serving preset quality."""
    ckpt = make_checkpoint(folder / "model", seed=0)
    model = DraftEditModel()
    model.load_context(SimpleNamespace(model_config={"checkpoint_path": str(ckpt), "preset": "quality"},
                                       artifacts=None))
    return model


def server_for(model, **limits) -> ModelServer:
    return ModelServer(model, dataclasses.replace(ServeConfig(), **limits), model_name=MODEL_NAME)


class Forwards:
    """Counts the network's forward passes (the decoding work done)."""

    def __init__(self, model) -> None:
        self.count = 0
        self.handle = model.lm.register_forward_hook(lambda *_: setattr(self, "count", self.count + 1))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def wait_until(condition, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@contextmanager
def live_server(server: ModelServer):
    """The app under uvicorn in a thread on a free local port; yields its base URL; afterwards the server is
    stopped, its thread joined, and the decoding thread gone."""
    with serving_in_thread(server) as url:
        yield url
    assert wait_until(server.batcher.idle), "the decoding thread is still running"
