# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # Database fallback options of the modules that act where real brokers have no HTTP API.
    # Keep in sync with plugins/module_utils/_broker_db.py:broker_db_argument_spec().
    DOCUMENTATION = r"""
options:
  db_dsn:
    description:
      - Connection string of the broker's PostgreSQL database, used only where the broker has no HTTP API
        for the job (real brokers lack the admin agent listing and org suspension).
      - A libpq DSN (V(postgresql://user:pass@127.0.0.1:5432/cullis) or V(host=... dbname=...)) or the
        broker's own E(DATABASE_URL) (V(postgresql+asyncpg://...)), which is converted.
      - If not set, the environment variable E(CULLIS_DB_DSN) is used.
      - Never logged or returned; database errors are reported with the password removed.
    type: str
  db_connect_timeout:
    description:
      - Seconds to wait for the database connection.
    type: int
    default: 10
requirements:
  - psycopg2 (only for the database path)
"""
