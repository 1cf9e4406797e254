# syntax=docker/dockerfile:1
# BudCluster: one image for every process (web, worker, beat, migrate, manage), started by scripts/entrypoint.sh.
#   docker build -t budcluster .
#   docker run --read-only -v budcluster-var:/app/var -e DJANGO_SECRET_KEY=... budcluster web
# It runs as uid 10001 with a read-only root filesystem possible: /app/var (BUDCLUSTER_VAR_DIR) is the one
# writable place (temporary files of Terraform, Ansible and gunicorn); mount a volume there. Crypto keys and
# secrets come from the environment and mounts at run time, never from the build context (.dockerignore).

# --- build: the virtualenv and the Terraform CLI ------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS build

# Terraform 1.5.7: the last MPL-2.0 release (redistributable in an image) and new enough for the cloud modules
# (terraform/modules/*: required_version >= 1.5.0). Checksums from HashiCorp's SHA256SUMS of that release.
ARG TERRAFORM_VERSION=1.5.7
ARG TERRAFORM_SHA256_AMD64=c0ed7bc32ee52ae255af9982c8c88a7a4c610485cf1d55feeb037eab75fa082c
ARG TERRAFORM_SHA256_ARM64=f4b4ad7c6b6088960a667e34495cae490fb072947a9ff266bf5929f5333565e4
ARG TARGETARCH=amd64

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Debian packages are not pinned to versions: bookworm's security updates replace them (a pin would break the
# build); the base image's tag fixes the distribution, the Python packages and Terraform are pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl unzip \
    && rm -rf /var/lib/apt/lists/*
RUN case "${TARGETARCH}" in \
        amd64) sum="${TERRAFORM_SHA256_AMD64}" ;; \
        arm64) sum="${TERRAFORM_SHA256_ARM64}" ;; \
        *) echo "no Terraform checksum for ${TARGETARCH}" >&2; exit 1 ;; \
    esac \
    && curl -fsSLo /tmp/terraform.zip \
        "https://releases.hashicorp.com/terraform/${TERRAFORM_VERSION}/terraform_${TERRAFORM_VERSION}_linux_${TARGETARCH}.zip" \
    && echo "${sum}  /tmp/terraform.zip" | sha256sum -c - \
    && unzip -d /usr/local/bin /tmp/terraform.zip terraform \
    && rm /tmp/terraform.zip \
    && /usr/local/bin/terraform version

# requirements.txt carries Ansible with its collections (kubernetes.core among them) and the kubernetes client
# the collection's modules use.
ENV VIRTUAL_ENV=/opt/venv PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv "${VIRTUAL_ENV}"
COPY requirements.txt /tmp/requirements.txt
RUN "${VIRTUAL_ENV}/bin/pip" install --no-compile -r /tmp/requirements.txt \
    && "${VIRTUAL_ENV}/bin/ansible-galaxy" collection list kubernetes.core

# --- runtime -----------------------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm

# openssh-client: Ansible's ssh connection for on-prem hosts (the cluster playbooks themselves run locally).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates openssh-client \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 budcluster \
    && useradd --uid 10001 --gid 10001 --home-dir /app/var/home --no-create-home --shell /usr/sbin/nologin budcluster

COPY --from=build /opt/venv /opt/venv
COPY --from=build /usr/local/bin/terraform /usr/local/bin/terraform

# Everything a process writes lives under BUDCLUSTER_VAR_DIR: HOME (Ansible's ~/.ansible), TMPDIR (Terraform's and
# Ansible's temporary kubeconfigs, gunicorn's heartbeats), Matplotlib's cache.
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BUDCLUSTER_VAR_DIR=/app/var \
    HOME=/app/var/home \
    TMPDIR=/app/var/tmp \
    MPLCONFIGDIR=/app/var/tmp/matplotlib \
    ANSIBLE_HOME=/app/var/home/.ansible \
    ANSIBLE_LOCAL_TEMP=/app/var/tmp/ansible \
    DJANGO_STATIC_ROOT=/app/static \
    TERRAFORM_BINARY=/usr/local/bin/terraform \
    PORT=9082

WORKDIR /app
COPY . /app
# Static files and byte code are made at build time: nothing is written under /app at run time but var/.
RUN DJANGO_SECRET_KEY=build-only BUDCLUSTER_VAR_DIR=/tmp/build-var python manage.py collectstatic --noinput \
    && python -m compileall -q /app /opt/venv \
    && rm -rf /tmp/build-var \
    && mkdir -p /app/var/tmp /app/var/home \
    && chown -R 10001:10001 /app/var \
    && chmod 0700 /app/var \
    && chmod 0755 /app/scripts/entrypoint.sh

USER 10001:10001
EXPOSE 9082
VOLUME ["/app/var"]
ENTRYPOINT ["/app/scripts/entrypoint.sh"]
CMD ["web"]
