"""Alembic migrations for the zuplo-sts tables, installed as the package ``sts._migrations``."""
