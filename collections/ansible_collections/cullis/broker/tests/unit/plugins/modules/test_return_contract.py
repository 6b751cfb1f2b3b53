# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every key a module returns is documented in its RETURN (issue 15, "argument specs enforce what
the docs say"), and what RETURN says is `returned: always` is returned.

Modules run for real, in-process, where that needs no service: against temporary files, and against
a closed loopback port where a module's answer to "nothing listens" is a result, not a failure.
The modules that need a running broker, Vault or PostgreSQL are checked the same way by
tests/integration/test_check_mode_contract.py (they run there against the real services).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import importlib
import json
import os
import socket

import pytest
import yaml

from ansible.module_utils.testing import patch_module_args

MODULES_DIR = os.path.join(os.path.dirname(__file__), '..', '..', '..', '..', 'plugins', 'modules')
MODULES = sorted(f[:-3] for f in os.listdir(MODULES_DIR) if f.endswith('.py') and not f.startswith('_'))
# keys AnsibleModule adds itself
COMMON_KEYS = {'changed', 'failed', 'msg', 'invocation', 'warnings', 'deprecations', 'diff', 'skipped',
               'exception'}
# exit_json adds the file's attributes to a result holding `path` or `dest` (AnsibleModule.add_path_info)
PATH_INFO_KEYS = {'uid', 'gid', 'owner', 'group', 'mode', 'state', 'size', 'secontext'}


def load(name):
    return importlib.import_module('ansible_collections.cullis.broker.plugins.modules.%s' % name)


def return_doc(name):
    return yaml.safe_load(load(name).RETURN) or {}


def run_module(name, args, capsys):
    """Run the module's main() with args; the JSON it printed."""
    mod = load(name)
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            mod.main()
    out = capsys.readouterr().out
    return json.loads(out)


def undocumented(name, result):
    added = PATH_INFO_KEYS if ('path' in result or 'dest' in result) else set()
    return sorted(set(result) - COMMON_KEYS - added - set(return_doc(name)))


def missing_always(name, result):
    return sorted(k for k, v in return_doc(name).items() if v.get('returned') == 'always' and k not in result)


def assert_contract(name, result):
    assert not undocumented(name, result), "%s returns keys its RETURN does not document: %s" % (
        name, undocumented(name, result))
    if not result.get('failed'):
        assert not missing_always(name, result), "%s does not return its 'returned: always' keys %s" % (
            name, missing_always(name, result))


@pytest.fixture
def closed_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connections are refused at once
    return port


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / 'backup.key'
    path.write_bytes(os.urandom(32))
    path.chmod(0o600)
    return str(path)


@pytest.mark.parametrize('name', MODULES)
def test_every_module_documents_its_return_values(name):
    doc = return_doc(name)
    assert isinstance(doc, dict) and doc, "%s has no RETURN" % name
    for key, spec in doc.items():
        assert spec.get('description') and spec.get('returned') and spec.get('type'), (name, key)


def test_the_retries_return_value_is_documented_identically():
    """RETURN cannot use doc fragments in ansible-core: the copies of `retries` must not drift."""
    docs = dict((name, return_doc(name)['retries']) for name in MODULES if 'retries' in return_doc(name))
    assert len(docs) >= 2
    first = list(docs.values())[0]
    assert all(doc == first for doc in docs.values()), docs


def test_backup_set_every_state(tmp_path, key_file, capsys):
    root = tmp_path / 'sets'
    set_dir = root / 'set-20260101T000000000Z'
    set_dir.mkdir(parents=True)
    env = tmp_path / 'env'
    env.write_text('ADMIN_SECRET=x\n')
    base = dict(path=str(set_dir), encryption_key_file=key_file)
    results = [
        run_module('backup_set', dict(base, files=[dict(name='env', src=str(env))]), capsys),
        run_module('backup_set', dict(base, state='verified'), capsys),
        run_module('backup_set', dict(base, state='extracted', name='env', dest=str(tmp_path / 'out')), capsys),
        run_module('backup_set', dict(path=str(root), state='latest'), capsys),
        run_module('backup_set', dict(path=str(root), state='pruned', keep_last=1, _ansible_check_mode=True), capsys),
    ]
    for r in results:
        assert not r.get('failed'), r
        assert_contract('backup_set', r)
    assert (tmp_path / 'out').read_text() == 'ADMIN_SECRET=x\n'
    info = run_module('backup_set_info', dict(path=str(root)), capsys)
    assert info['set'] == str(set_dir) and info['count'] == 1 and info['changed'] is False
    assert_contract('backup_set_info', info)


def test_backup_set_present_and_extracted_are_idempotent(tmp_path, key_file, capsys):
    set_dir = tmp_path / 'set-1'
    set_dir.mkdir()
    env = tmp_path / 'env'
    env.write_text('A=1\n')
    add = dict(path=str(set_dir), encryption_key_file=key_file, files=[dict(name='env', src=str(env))])
    assert run_module('backup_set', dict(add, _ansible_check_mode=True), capsys)['changed'] is True
    assert not (set_dir / 'backup-set.json').exists()  # check mode wrote nothing
    assert run_module('backup_set', add, capsys)['changed'] is True
    sealed = (set_dir / 'backup-set.json').read_bytes()
    assert run_module('backup_set', dict(add, _ansible_check_mode=True), capsys)['changed'] is False
    assert run_module('backup_set', add, capsys)['changed'] is False
    assert (set_dir / 'backup-set.json').read_bytes() == sealed
    # new content is added again and the set resealed
    env.write_text('A=2\n')
    assert run_module('backup_set', add, capsys)['changed'] is True
    assert (set_dir / 'backup-set.json').read_bytes() != sealed
    # extraction: written once (mode 0600), then unchanged; a changed file is put back
    out = tmp_path / 'restored' / 'env'
    ext = dict(path=str(set_dir), state='extracted', name='env', dest=str(out), encryption_key_file=key_file)
    assert run_module('backup_set', ext, capsys)['changed'] is True
    assert out.read_text() == 'A=2\n' and out.stat().st_mode & 0o777 == 0o600
    assert run_module('backup_set', ext, capsys)['changed'] is False
    out.write_text('tampered')
    assert run_module('backup_set', dict(ext, _ansible_check_mode=True), capsys)['changed'] is True
    assert out.read_text() == 'tampered'
    assert run_module('backup_set', ext, capsys)['changed'] is True
    assert out.read_text() == 'A=2\n'
    assert not [p for p in out.parent.iterdir() if p.name.startswith('.')]  # no temporary file left


def test_vault_snapshot_check_mode(tmp_path, closed_port, capsys):
    r = run_module('vault_snapshot', dict(url=['http://127.0.0.1:%d' % closed_port], token='t0ken-for-tests',
                                          path=str(tmp_path) + '/', _ansible_check_mode=True), capsys)
    assert r['changed'] and not r.get('failed'), r
    assert_contract('vault_snapshot', r)


def test_vault_snapshot_token_and_keys_file_are_exclusive(tmp_path, capsys):
    r = run_module('vault_snapshot', dict(url=['http://127.0.0.1:1'], token='t0ken-for-tests', keys_file=str(tmp_path / 'k'),
                                          path=str(tmp_path)), capsys)
    assert r['failed'] and 'mutually exclusive' in r['msg'], r


def test_unreachable_services_are_reported(tmp_path, closed_port, capsys):
    """Modules whose job is to report a dead service return a result, documented like any other."""
    cases = [
        ('redis_ping', dict(port=closed_port)),
        ('vault_info', dict(url=['http://127.0.0.1:%d' % closed_port], retries=0)),
        ('stack_info', dict(stack_dir=str(tmp_path / 'no-stack'))),
    ]
    for name, args in cases:
        r = run_module(name, args, capsys)
        assert not r.get('failed'), (name, r)
        assert_contract(name, r)


def test_disk_usage_info_returns_its_documented_keys(tmp_path, capsys):
    (tmp_path / 'data').mkdir()
    (tmp_path / 'data' / 'f').write_bytes(b'x' * 10000)
    r = run_module('disk_usage_info', dict(paths=[str(tmp_path / 'later')],
                                           directories=[str(tmp_path / 'data'), str(tmp_path / 'gone')]), capsys)
    assert not r.get('failed') and r['changed'] is False, r
    assert_contract('disk_usage_info', r)
    assert r['filesystems'][0]['checked'] == str(tmp_path)
    assert [d['exists'] for d in r['directories']] == [True, False]
    assert r['directories'][0]['bytes'] >= 10000
