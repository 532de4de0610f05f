# GPU worker image for draftedit: CUDA PyTorch base + the project with its pinned dependencies,
# running a Prefect worker that picks up pipeline runs from a work pool.
#
# Build (from the repository root):
#   docker build -t draftedit-worker:0.1.0 .
#   # another CUDA/torch base: --build-arg BASE_IMAGE=pytorch/pytorch:<torch>-cuda<x.y>-cudnn9-runtime
#   # (its torch version must equal the torch pin in requirements.lock; the build checks it)
# Create the pool once (anywhere the Prefect API is reachable):
#   prefect work-pool create draftedit-gpu --type process
# Run a worker on a GPU host (it needs only the Prefect API; the MLflow server's URL travels in each
# run's parameters, and artifacts go through that server, so no volume is needed):
#   docker run --gpus all --rm \
#     -e PREFECT_API_URL=http://<prefect-server>:4200/api \
#     draftedit-worker:0.1.0
#   # other pool: append  --pool <name>  (arguments after the image go to `prefect worker start`)
# Deploy the pipeline and its stages to the pool, then trigger runs there (docs/workers.md):
#   draftedit deploy apply --pool draftedit-gpu tracking.uri=http://<mlflow-server>:5000
# Lint: .venv/bin/hadolint Dockerfile

ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DRAFTEDIT_OUTPUT_DIR=/home/draftedit/outputs

WORKDIR /opt/draftedit

# Dependencies first (cached layer). torch comes from the base image (its CUDA build), so the lock's
# torch line is dropped after checking that the base carries exactly that version.
COPY requirements.lock ./
RUN pinned="$(sed -n 's/^torch==//p' requirements.lock)" \
    && have="$(python -c 'import torch; print(torch.__version__.split("+")[0])')" \
    && if [ "$pinned" != "$have" ]; then \
         echo "base image has torch $have but requirements.lock pins torch==$pinned" >&2; exit 1; \
       fi \
    && grep -v '^torch==' requirements.lock > /tmp/requirements-no-torch.txt \
    && python -m pip install --no-cache-dir -r /tmp/requirements-no-torch.txt \
    && rm /tmp/requirements-no-torch.txt

# The project, installed editable so conf/ stays next to the code that reads it.
COPY pyproject.toml README.md ./
COPY model ./model
COPY components ./components
COPY flows ./flows
COPY conf ./conf
RUN python -m pip install --no-cache-dir --no-deps -e . \
    && useradd --create-home --uid 1000 --shell /bin/bash draftedit \
    && mkdir -p /home/draftedit/outputs \
    && chown -R draftedit:draftedit /home/draftedit

USER 1000:1000
WORKDIR /home/draftedit

ENTRYPOINT ["prefect", "worker", "start", "--type", "process"]
CMD ["--pool", "draftedit-gpu"]
