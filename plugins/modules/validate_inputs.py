# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

from __future__ import annotations


DOCUMENTATION = r"""
module: validate_inputs
short_description: Check the variables of the registry_mirror role, and what the host has, before any change
version_added: "1.0.0"
description:
  - Runs on the controller. Without O(host_report) it checks every C(registry_mirror_*) variable against the rules
    that need only the input - paths, accounts, URLs and ports, versions and checksums, durations, addresses,
    secrets, characters that could add a line or a directive to a systemd unit, an environment file or YAML, and
    combinations that conflict - and reports B(every) problem at once, one line each, each naming the variable.
  - Fails on a C(registry_mirror_*) variable that the role does not know, naming the closest known one; with
    C(registry_mirror_unknown_variables=warn) that is a warning instead.
  - With O(host_report) (the output of the role's read-only inspection command) it checks what the host has instead
    - existing accounts (never root, never one the role did not create unless
    C(registry_mirror_existing_accounts) lists it, never one whose primary group differs) and existing directories
    (never a symbolic link, never one that resolves to a system directory, never one that belongs to another account)
    - and returns what it found.
  - Messages never contain the value of C(registry_mirror_dockerhub_username) or C(registry_mirror_dockerhub_token),
    at any verbosity - only what is wrong with it (empty, a newline, a control character, whitespace, a non-ASCII
    character, a character the environment file would interpret).
  - Used by the C(actuated.registry.registry_mirror) role as the first task of its preflight; it reads the variables
    from the host's variables, not from its arguments.
author:
  - actuated.registry contributors (@self-actuated)
options:
  argument_spec:
    description:
      - The options of the role (as in C(meta/argument_specs.yml)), which name every variable the role knows.
      - Defaults to the C(main) entry point of the role that runs the task.
    type: dict
  host_report:
    description:
      - The output of the role's inspection command on the host (tab-separated C(user), C(group), C(unit) and C(path)
        lines). When set, the host rules run instead of the input rules.
    type: str
extends_documentation_fragment:
  - action_common_attributes
  - action_common_attributes.conn
  - action_common_attributes.flow
attributes:
  action:
    support: full
  async:
    support: none
  become:
    support: none
  bypass_host_loop:
    support: none
  check_mode:
    support: full
    details: Reads only; the same in check mode.
  connection:
    support: none
  delegation:
    support: none
  diff_mode:
    support: none
  platform:
    platforms: all
notes:
  - The rules themselves live in the collection's private module utility C(_mirror_inputs), unit-tested without a
    host.
seealso:
  - module: ansible.builtin.validate_argument_spec
"""

EXAMPLES = r"""
---
- name: Check the role's variables (no host needed)
  actuated.registry.validate_inputs:

- name: Check what the host has
  actuated.registry.validate_inputs:
    host_report: "{{ inspection.stdout }}"
  register: host_checks
"""

RETURN = r"""
errors:
  description: Every problem found, one sentence each, starting with the name of the variable.
  returned: always
  type: list
  elements: str
  sample:
    - registry_mirror_bind_adress is not a variable of this role; did you mean registry_mirror_bind_address?
user_exists:
  description: Whether C(registry_mirror_user) exists on the host.
  returned: with O(host_report)
  type: bool
group_exists:
  description: Whether C(registry_mirror_group) exists on the host.
  returned: with O(host_report)
  type: bool
unit_installed:
  description: Whether C(/etc/systemd/system/registry.service) exists on the host.
  returned: with O(host_report)
  type: bool
mirror_active:
  description: Whether the C(registry) unit was active when the host was inspected.
  returned: with O(host_report)
  type: bool
"""
