# BudCluster service image: web (gunicorn), Celery worker and beat all run from it (see compose.yaml).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    BUDCLUSTER_VAR_DIR=/var/lib/budcluster \
    DJANGO_STATIC_ROOT=/app/static

RUN apt-get update \
    && apt-get install -y --no-install-recommends curl ca-certificates openssh-client \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 budcluster \
    && mkdir -p /var/lib/budcluster /app \
    && chown budcluster /var/lib/budcluster

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY . .
RUN DJANGO_SECRET_KEY=build-only python manage.py collectstatic --noinput

USER budcluster
EXPOSE 9082
HEALTHCHECK --interval=30s --timeout=5s --retries=3 CMD curl -fsS http://127.0.0.1:9082/health || exit 1
CMD ["gunicorn", "budcluster_site.wsgi", "--bind", "0.0.0.0:9082", "--workers", "3", "--access-logfile", "-"]
