# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""cullis.broker.file_sha1: the checksum ansible's find/stat/copy compute on a host, of any bytes."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib

import pytest

from ansible.errors import AnsibleLookupError
from ansible_collections.cullis.broker.plugins.lookup.file_sha1 import LookupModule


def test_checksums_in_the_order_given_lists_flattened(tmp_path):
    text, binary = tmp_path / "a.py", tmp_path / "b.bin"
    text.write_text("print('x')\n")
    binary.write_bytes(bytes(range(256)) * 1000)  # not UTF-8, larger than one read block
    out = LookupModule().run([[str(binary), str(text)]])
    assert out == [hashlib.sha1(binary.read_bytes()).hexdigest(), hashlib.sha1(text.read_bytes()).hexdigest()]


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(AnsibleLookupError, match="cannot read .*missing"):
        LookupModule().run([str(tmp_path / "missing")])
