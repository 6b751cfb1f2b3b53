# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""stack_info's backend (_stack_info.py): settings vs secrets of a host's .env, layout, disk, no daemon."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.cullis.broker.plugins.module_utils._stack_info import disk_usage, gather, split_env


def test_secrets_and_urls_with_credentials_are_kept_apart_from_settings():
    settings, secrets = split_env({
        'ADMIN_SECRET': 'a', 'POSTGRES_PASSWORD': 'b', 'VAULT_TOKEN': 'c', 'DASHBOARD_SIGNING_KEY': 'd',
        'DATABASE_URL': 'postgresql+asyncpg://atn:b@db:5432/agent_trust', 'REDIS_URL': 'redis://:e@r:6379/0',
        'VAULT_ADDR': 'https://vault:8200', 'BROKER_PUBLIC_URL': 'https://broker.example.com'})
    assert settings == {'VAULT_ADDR': 'https://vault:8200', 'BROKER_PUBLIC_URL': 'https://broker.example.com'}
    assert sorted(secrets) == ['ADMIN_SECRET', 'DASHBOARD_SIGNING_KEY', 'DATABASE_URL', 'POSTGRES_PASSWORD',
                               'REDIS_URL', 'VAULT_TOKEN']


def test_gather_returns_secrets_only_when_asked(tmp_path):
    (tmp_path / 'logs').mkdir()
    (tmp_path / '.env').write_text('# comment\nREDIS_PASSWORD=s3cret\nVAULT_ADDR=https://v:8200\n')
    info = gather(str(tmp_path))
    assert 'secrets' not in info
    assert info['secret_keys'] == ['REDIS_PASSWORD']
    assert 's3cret' not in repr(info)
    assert info['settings'] == {'VAULT_ADDR': 'https://v:8200'}
    assert info['layout']['env_file_exists'] is True
    assert info['layout']['logs'] == {'path': str(tmp_path / 'logs'), 'exists': True}
    assert info['layout']['ca_cert']['exists'] is False
    # no supervisord here: reported, not raised
    assert info['runtime']['daemon_running'] is False and info['services'] == {}
    assert gather(str(tmp_path), with_secrets=True)['secrets'] == {'REDIS_PASSWORD': 's3cret'}


def test_missing_stack_dir_and_disk_of_the_nearest_parent(tmp_path):
    info = gather(str(tmp_path / 'nope'))
    assert info['layout']['stack_dir_exists'] is False and info['layout']['env_file_exists'] is False
    assert info['settings'] == {} and info['secret_keys'] == []
    disk = disk_usage(str(tmp_path / 'nope' / 'deeper'))
    assert disk['checked'] == str(tmp_path) and disk['path'] == str(tmp_path / 'nope' / 'deeper')
    assert disk['total_bytes'] > 0 and 0 <= disk['used_percent'] <= 100
