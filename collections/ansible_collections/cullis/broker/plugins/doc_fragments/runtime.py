# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # Options of every module that reaches the stack's services through its runtime.
    # Keep in sync with plugins/module_utils/_runtime.py:runtime_argument_spec().
    DOCUMENTATION = r"""
options:
  stack_dir:
    description: The stack's state directory on the managed host (C(cullis_stack_dir)).
    type: path
    required: true
  runtime:
    description: How the stack runs its services (C(cullis_runtime)). Only V(process) exists in this version.
    type: str
    choices: [process, compose]
    default: process
  timeout:
    description: Seconds to wait for the runtime (and, for M(cullis.broker.stack_service), for a service) to answer.
    type: float
    default: 60
notes:
  - Set these options once per play with C(module_defaults) and the action group
    C(group/cullis.broker.runtime).
"""
