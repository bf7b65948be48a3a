"""Alembic migrations for the five tables, shipped inside the package so `distillery db upgrade`
works from any directory without an alembic.ini (models.migrate configures Alembic in code).

Adding a revision after changing models/tables.py: against a database at head, run

    python -c "from models.migrate import make_revision; make_revision(URL, 'what changed')"

then read the generated file in versions/ and fix what autogenerate cannot know: write the
column types as plain SQLAlchemy types (sa.String() for a str enum, sa.JSON().with_variant(
postgresql.JSONB(), "postgresql"), sa.DateTime(timezone=True)), never models.types, so an old
revision keeps meaning what it meant when it was written.
"""
