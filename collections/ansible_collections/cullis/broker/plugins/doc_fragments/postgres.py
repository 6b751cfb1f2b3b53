# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # Connection options of every module that runs the PostgreSQL client programs.
    # Keep in sync with plugins/module_utils/_postgres.py:postgres_argument_spec().
    DOCUMENTATION = r"""
options:
  login_host:
    description:
      - Host of the PostgreSQL server. If not set, E(PGHOST), then V(127.0.0.1).
    type: str
    default: 127.0.0.1
    aliases: [host]
  login_port:
    description:
      - Port of the PostgreSQL server. If not set, E(PGPORT), then V(5432).
    type: int
    default: 5432
    aliases: [port]
  login_user:
    description:
      - Role to connect as. If not set, E(PGUSER), then V(postgres).
      - Restores need a role that may create and rename databases (owner with CREATEDB, or a superuser).
    type: str
    default: postgres
    aliases: [user]
  login_password:
    description:
      - Password of O(login_user). If not set, E(PGPASSWORD) is used.
      - Handed to the client programs in the E(PGPASSWORD) environment variable only; never in
        argv, output or logs.
    type: str
    aliases: [password]
  maintenance_db:
    description:
      - Database to connect to for server-level work (create, rename, drop databases).
    type: str
    default: postgres
  pg_bin_dir:
    description:
      - Directory holding C(psql), C(pg_dump) and C(pg_restore).
    type: path
    default: /usr/lib/postgresql/15/bin
  connect_timeout:
    description:
      - Connection timeout in seconds (E(PGCONNECT_TIMEOUT) of the client programs).
    type: int
    default: 10
"""
