# inscale server image, CPU (default) or GPU, from one file.
#
#   docker build -t inscale:0.1.0 .
#   docker build -t inscale:0.1.0-gpu --build-arg VARIANT=gpu \
#       --build-arg BASE_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04 .
#
# Build arguments:
#   VARIANT      cpu | gpu: which lock file (constraints/VARIANT.txt, onnxruntime or
#                onnxruntime-gpu with nvidia-ml-py) and which execution providers by default
#   BASE_IMAGE   any Debian or Ubuntu image; Python 3.11+ and venv are installed if missing.
#                GPU: a CUDA 13.x runtime image with cuDNN 9, what onnxruntime-gpu 1.31 is built for
#   VERSION, REVISION, CREATED   OCI labels (the release, the git commit, the build time)
# Ports: 8000 HTTP (INSCALE_PORT), 8001 gRPC (INSCALE_GRPC_PORT; 0 turns gRPC off).
# Pin the base by digest for a byte-for-byte rebuild (BASE_IMAGE=python:3.11-slim-bookworm@sha256:...).
# With podman or buildah, build with `--format docker`: the OCI format has no HEALTHCHECK.
ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG VARIANT=cpu

FROM ${BASE_IMAGE} AS base
# Python for bases that have none (the CUDA images); the official Python images skip this.
# Versions come from the base's own distribution release, so they are not pinned here.
# hadolint ignore=DL3008
RUN if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            ca-certificates python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# Dependencies: a virtual environment with the locked packages. It depends on constraints/ only,
# so its layers (and the runtime layer copied from it) are reused until a lock file changes.
FROM base AS deps
ARG VARIANT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Hash-checked, and --no-deps: nothing outside the lock is resolved at build time. The runtime
# environment gets no pip of its own; the build environment's pip installs into it.
COPY constraints/ constraints/
RUN python3 -m venv /opt/build \
    && /opt/build/bin/pip install --no-deps --require-hashes -r constraints/build.txt \
    && python3 -m venv --without-pip /opt/inscale \
    && /opt/build/bin/pip --python /opt/inscale/bin/python install \
        --no-deps --require-hashes -r "constraints/${VARIANT}.txt"

# The inscale wheel, installed into a folder of its own (/opt/inscale-app, on PYTHONPATH): a new
# release changes that small layer only. Then a smoke test: the app imports (every dependency
# resolves) and ONNX Runtime loads its native library.
FROM deps AS build
COPY pyproject.toml README.md ./
COPY service/ service/
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheels . \
    && /opt/build/bin/pip --python /opt/inscale/bin/python install --no-deps \
        --target /opt/inscale-app /tmp/wheels/inscale-*.whl \
    && PYTHONPATH=/opt/inscale-app /opt/inscale/bin/python -c \
        'import onnxruntime, inscale.app; print(onnxruntime.get_device())'

# Runtime stage: the base, the environment, an unprivileged user. Nothing else.
FROM base AS runtime
ARG VARIANT
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="inscale" \
      org.opencontainers.image.description="ONNX model serving with dynamic request batching (${VARIANT})" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="inscale" \
      io.inscale.variant="${VARIANT}"

# A fixed numeric uid, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
# /models is where a user's own model repository is mounted (see INSCALE_MODEL_REPOSITORY).
# It belongs to inscale: a new volume mounted there takes that ownership (Docker and podman
# copy it), so a step running as inscale can fill it, as k8s/'s init container does.
RUN groupadd --gid 10001 inscale \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin inscale \
    && install -d -o 10001 -g 10001 -m 0755 /models
COPY --from=deps /opt/inscale /opt/inscale
COPY --from=build /opt/inscale-app /opt/inscale-app

# The bundled models (digits, digits-wide) ship inside the package and are served while
# INSCALE_MODEL_REPOSITORY is unset; mount your own repository at /models and set it to /models.
# The shutdown grace stays under `docker stop`'s default 10 s, so a drain is never cut short by
# SIGKILL; raise it together with --stop-timeout, stop_grace_period or
# terminationGracePeriodSeconds. Byte code was compiled at install: nothing is written at run
# time, so the root filesystem can be read-only (`--workers N` needs a writable /tmp).
# INSCALE_PROVIDERS: "gpu" means CUDA; CPU is always appended as the last fallback. (The CUDA
# base images already set NVIDIA_VISIBLE_DEVICES and NVIDIA_DRIVER_CAPABILITIES.)
ENV PATH=/opt/inscale-app/bin:/opt/inscale/bin:$PATH \
    PYTHONPATH=/opt/inscale-app \
    INSCALE_PROVIDERS=${VARIANT} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    INSCALE_HOST=0.0.0.0 \
    INSCALE_PORT=8000 \
    INSCALE_GRPC_PORT=8001 \
    INSCALE_CONTROL_API=off \
    INSCALE_LOG_FORMAT=json \
    INSCALE_SHUTDOWN_GRACE_S=8

USER 10001:10001
# 8000: HTTP (/predict, the V2 routes, /metrics, health). 8001: the Open Inference Protocol
# over gRPC, Triton's port (INSCALE_GRPC_PORT=0 turns it off).
EXPOSE 8000 8001
# On SIGTERM the server stops accepting, reports not ready, and finishes what it accepted.
STOPSIGNAL SIGTERM
# Liveness only: "ready" depends on models loading, which Kubernetes probes separately.
# Over HTTP, which is always on; gRPC health (grpc.health.v1) is there for Kubernetes' gRPC
# probes and grpc_health_probe, and needs no tool in the image.
# No curl in the image: Python's urllib raises (exit status 1) on a refused connection, a
# timeout or a non-2xx answer.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('INSCALE_PORT', '8000'), timeout=2)"]
ENTRYPOINT ["inscale"]
CMD ["serve"]
