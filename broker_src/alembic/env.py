"""Alembic environment: async (asyncpg), URL from DATABASE_URL, under the migration advisory lock.

Every upgrade — at broker startup or from the `alembic` CLI — takes the Postgres session advisory
lock 864996388670390494 first, so replicas/workers started at once migrate one after the other
and the later ones find the schema at head (a no-op). Unlike some brokers, this file does not
reconfigure Python logging (no fileConfig), so the app's loggers keep working.
"""
from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool, text
from sqlalchemy.ext.asyncio import create_async_engine

from app.config import Settings
from app.models import metadata

MIGRATION_LOCK_KEY = 864996388670390494
target_metadata = metadata


def _url() -> str:
    url = context.config.attributes.get("database_url") or Settings.from_env().database_url
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+asyncpg://" + url.split("://", 1)[1]
    return url


def _do_run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = create_async_engine(_url(), poolclass=pool.NullPool)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            await conn.commit()
            try:
                await conn.run_sync(_do_run)
                await conn.commit()
            finally:
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
                await conn.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
