"""WSGI entry point (gunicorn budcluster_site.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "budcluster_site.settings")
application = get_wsgi_application()
