# -*- coding: utf-8 -*-
# Copyright (c) Cullis operations team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of cullis.broker.stack_service: the runtime options the task leaves out come from the host's
inventory (cullis_runtime, cullis_compose_project_dir, cullis_compose_services, ...; see
plugin_utils/_runtime_defaults.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.cullis.broker.plugins.plugin_utils._runtime_defaults import RuntimeDefaultsAction


class ActionModule(RuntimeDefaultsAction):
    module = 'cullis.broker.stack_service'
