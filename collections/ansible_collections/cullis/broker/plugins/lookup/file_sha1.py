# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: file_sha1
short_description: SHA-1 checksums of files on the controller, in the order given
version_added: 0.1.0
description:
  - Returns the SHA-1 hex digest of each file's bytes, the checksum C(ansible.builtin.stat),
    C(ansible.builtin.find) (O(ansible.builtin.find#module:get_checksum=true)) and C(ansible.builtin.copy)
    compute on a host, so that a tree can be compared with its copy on a host in ONE module run
    (C(find)) instead of one per file.
  - Files are read in binary (any content). Lists among the terms are flattened.
author: Cullis operations team (@cullis)
options:
  _terms:
    description: Paths of files on the controller.
    required: true
    type: list
    elements: path
"""

EXAMPLES = r"""
- name: Checksums of a source tree's files, by path
  ansible.builtin.set_fact:
    tree_sha1: "{{ dict(files | map(attribute='path') | zip(query('cullis.broker.file_sha1', files | map(attribute='src') | list))) }}"
"""

RETURN = r"""
_raw:
  description: One SHA-1 hex digest per file, in the order of the terms.
  type: list
  elements: str
"""

import hashlib

from ansible.errors import AnsibleLookupError
from ansible.module_utils.common.text.converters import to_bytes, to_native
from ansible.plugins.lookup import LookupBase


def _flatten(terms):
    for term in terms:
        if isinstance(term, (list, tuple)):
            yield from _flatten(term)
        else:
            yield term


def file_sha1(path):
    digest = hashlib.sha1()
    with open(to_bytes(path, errors='surrogate_or_strict'), 'rb') as f:
        for block in iter(lambda: f.read(65536), b''):
            digest.update(block)
    return digest.hexdigest()


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        out = []
        for path in _flatten(terms):
            try:
                out.append(file_sha1(path))
            except (IOError, OSError) as e:
                raise AnsibleLookupError('cannot read %s: %s' % (path, to_native(e)))
        return out
