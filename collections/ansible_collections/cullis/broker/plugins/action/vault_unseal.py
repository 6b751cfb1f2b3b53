# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of cullis.broker.vault_unseal: the keys file is read ON THE CONTROLLER.

The unseal keys file is cold storage: it stays on the controller and is never copied to a
target. With `keys_file`, this plugin checks the file's mode on the controller (refused when
group or others can read or write it, unless `insecure_keys_file=true`: the collection's one
policy for secret files), parses it there and hands the keys to the module running on the Vault
host through its `keys` option, which is no_log. Neither the path's content nor a key appears in
any output; an error names the file and what is wrong with it, never a key.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible.plugins.action import ActionBase
from ansible_collections.cullis.broker.plugins.module_utils._vault import KeysError, read_keys_file


class ActionModule(ActionBase):
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        args = dict(self._task.args)
        keys_file = args.pop('keys_file', None)
        insecure = args.pop('insecure_keys_file', False)
        if keys_file is not None:
            if args.get('keys'):
                result.update(failed=True, msg='parameters are mutually exclusive: keys|keys_file')
                return result
            try:
                insecure = self._bool(insecure)
                keys = read_keys_file(os.path.expanduser(str(keys_file)), insecure)
            except (KeysError, TypeError) as e:
                result.update(failed=True, msg=str(e), changed=False)
                return result
            args['keys'] = keys
        elif insecure:
            args['insecure_keys_file'] = insecure
        result.update(self._execute_module(module_name='cullis.broker.vault_unseal', module_args=args,
                                           task_vars=task_vars))
        return result

    @staticmethod
    def _bool(value):
        from ansible.module_utils.parsing.convert_bool import boolean

        return boolean(value, strict=True)
