# tenant-release: the official Airflow 3 image, extended with our pinned
# dependencies and our own package (plugins/tenant_release, which provides the
# `tenant-release` console command). Built once by docker-compose.yaml
# (`build: .` in the x-airflow-common anchor) and shared by every Airflow service.
#
# See https://airflow.apache.org/docs/docker-stack/build.html ("Extending the image").
FROM apache/airflow:3.3.2-python3.11

# git: the build task fetches an application's source at the release tag (application.source.git).
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*
USER airflow

# Pinned third-party dependencies. Repeating apache-airflow at the image's own
# version (AIRFLOW_VERSION is set by the base image) stops a pin in
# requirements.txt from silently up- or downgrading Airflow itself.
COPY requirements.txt /requirements.txt
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /requirements.txt

# Our package, installed in editable mode at AIRFLOW_HOME (/opt/airflow). The
# package then lives at /opt/airflow/plugins/tenant_release, the very path that
# docker-compose bind-mounts ./plugins onto, so code edits on the host are
# picked up without a rebuild (only pyproject.toml changes, such as new console
# scripts, need `docker compose build`). Owned by the airflow user so the build
# backend can write its metadata next to the sources.
COPY --chown=airflow:0 pyproject.toml /opt/airflow/pyproject.toml
COPY --chown=airflow:0 plugins /opt/airflow/plugins
RUN pip install --no-cache-dir --no-deps -e /opt/airflow
