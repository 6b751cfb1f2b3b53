# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal plugin_utils: the runtime options of a task, defaulted from the host's inventory.

Not a public API of the collection. The runtime modules (stack_service, service_info, stack_info)
take `runtime`, `compose_project_dir`, `compose_project`, `compose_services` and `docker_host`.
The playbooks and roles pass only `runtime: "{{ cullis_runtime }}"`; the compose options of the
host come from its inventory here, in one place, so a compose project the collection did not
create (an adopted upstream deployment: `cullis_compose_project_dir`, `cullis_compose_services`,
...) is driven by every playbook without a change to it. An option the task sets wins; a
`module_defaults` value counts as set.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.plugins.action import ActionBase

# module option -> inventory variable
RUNTIME_VARS = (
    ('runtime', 'cullis_runtime'),
    ('compose_project_dir', 'cullis_compose_project_dir'),
    ('compose_project', 'cullis_compose_project'),
    ('compose_services', 'cullis_compose_services'),
    ('docker_host', 'cullis_docker_host'),
)


def host_vars(task_vars, delegated):
    """The variables of the host the module runs on (the delegated host's when delegating)."""
    if delegated and isinstance(task_vars.get('ansible_delegated_vars'), dict):
        for dvars in task_vars['ansible_delegated_vars'].values():
            if isinstance(dvars, dict):
                return dvars
    return task_vars


class RuntimeDefaultsAction(ActionBase):
    """Run `module` with the runtime options the task leaves out taken from the host's inventory."""

    _supports_check_mode = True
    # as ansible.builtin.normal: a task may run the module in the background (async/poll: the
    # rolling restart's stop runs while the drain is watched)
    _supports_async = True
    module = None

    def runtime_args(self, task_vars):
        args = dict(self._task.args)
        source = host_vars(task_vars or {}, self._task.delegate_to)
        for option, var in RUNTIME_VARS:
            if option != 'runtime' and args.get('runtime', 'process') != 'compose':
                break  # the compose options mean nothing to the process runtime
            if args.get(option) in (None, '', {}) and source.get(var) not in (None, '', {}):
                args[option] = self._templar.template(source[var])
        return args

    def run(self, tmp=None, task_vars=None):
        result = super(RuntimeDefaultsAction, self).run(tmp, task_vars)
        del tmp
        wrap_async = self._task.async_val and not self._connection.has_native_async
        result.update(self._execute_module(module_name=self.module, module_args=self.runtime_args(task_vars),
                                           task_vars=task_vars, wrap_async=wrap_async))
        if not wrap_async:
            # the async wrapper still needs the module's files; the job's own cleanup removes them
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result
