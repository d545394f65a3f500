"""WSGI entry point for production servers: ``sts.wsgi:app``.

Settings come from the environment; the server process validated them before starting workers.
"""

from sts import create_app

app = create_app()
