"""WSGI entry point for gunicorn: `gunicorn rest.wsgi:app`."""

from rest import create_app

app = create_app()
