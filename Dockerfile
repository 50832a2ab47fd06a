# One image for the api, worker, relay and migrate services (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TUNESERVE_DATA_DIR=/data \
    HF_HOME=/data/hf-cache

WORKDIR /app

# torch first, pinned, from the CPU-only index: an unpinned torch from PyPI is a multi-GB CUDA build.
# A GPU worker's image takes a CUDA index instead (docker-compose.yml, worker-gpu).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY requirements/ requirements/
RUN pip install --index-url "$TORCH_INDEX_URL" -r requirements/torch.txt

# Dependencies change less often than code: install them from the lock (exact versions, sha256
# hashes: the versions the tests passed with) before copying the code.
RUN pip install --require-hashes -r requirements/service.lock

COPY . .
# Editable: the migrations (versions/, script.py.mako) are read from /app/migrations at run time.
RUN pip install --no-deps -e . \
    && pip check \
    && useradd --system --uid 10001 --home-dir /data tuneserve \
    && mkdir -p /data \
    && chown tuneserve /data

USER tuneserve
VOLUME ["/data"]
EXPOSE 8000

CMD ["tuneserve", "api", "--host", "0.0.0.0", "--port", "8000"]
