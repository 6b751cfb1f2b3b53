# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # The attributes of every read-only (*_info / health) module of the collection.
    DOCUMENTATION = r"""
attributes:
  check_mode:
    support: full
    description: Read-only; runs the same probes in check mode.
  diff_mode:
    support: none
    description: Reports state only; there is nothing to diff.
  idempotent:
    support: full
    description: Read-only; repeated runs report the same and change nothing.
"""
