# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of cullis.broker.vault_token: censor a result that carries a new token.

A module cannot mark its own result no_log (Ansible strips `_ansible_no_log` from module
returns), so this thin wrapper runs the module and sets it when the result holds `token`. Every
callback, -vvv included, then prints the result as censored; the registered variable keeps
every field for the task that writes the token (itself `no_log: true`).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        result.update(self._execute_module(module_name='cullis.broker.vault_token', task_vars=task_vars))
        if result.get('token'):
            result['_ansible_no_log'] = True
        return result
