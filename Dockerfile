# One image for the api, worker and migrate services (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TUNESERVE_DATA_DIR=/data \
    HF_HOME=/data/hf-cache

WORKDIR /app

# torch first, pinned, from the CPU-only index: an unpinned torch from PyPI is a multi-GB CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

# Dependencies change less often than code: resolve them against pyproject.toml alone first.
COPY pyproject.toml ./
RUN mkdir -p app worker migrations \
    && touch app/__init__.py worker/__init__.py migrations/__init__.py README.md \
    && pip install '.[models]' \
    && pip uninstall -y tuneserve \
    && rm -rf app worker migrations README.md build *.egg-info

COPY . .
# Editable: the migrations (versions/, script.py.mako) are read from /app/migrations at run time.
RUN pip install --no-deps -e '.[models]' \
    && useradd --system --uid 10001 --home-dir /data tuneserve \
    && mkdir -p /data \
    && chown tuneserve /data

USER tuneserve
VOLUME ["/data"]
EXPOSE 8000

CMD ["tuneserve", "api", "--host", "0.0.0.0", "--port", "8000"]
