# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

from __future__ import annotations


class ModuleDocFragment:
    """The attributes the collection's modules share. Ansible merges each attribute with the module's own entry, whose
    keys win: a module adds its details (and its support where the fragment does not say it)."""

    # A module that runs on the managed host (cert_watch, registry_htpasswd): full support of check and diff mode, and
    # idempotent; the module gives the details.
    DOCUMENTATION = r"""
attributes:
  check_mode:
    description: Can run in check mode and return the changed status prediction without modifying the target.
    support: full
  diff_mode:
    description: Returns details on what has changed (or would change in check mode) when in diff mode.
    support: full
  idempotent:
    description:
      - When run twice in a row outside check mode, with the same arguments, the second run reports no change.
    support: full
  platform:
    description: Target OS/families that can be operated against.
    support: N/A
    platforms: posix
"""

    # An action that runs on the controller alone (fleet_ca, validate_inputs), after ansible.builtin's
    # action_common_attributes, action_common_attributes.conn and action_common_attributes.flow (the descriptions).
    CONTROLLER = r"""
attributes:
  action:
    support: full
  async:
    support: none
  become:
    support: none
  bypass_host_loop:
    support: none
  connection:
    support: none
  delegation:
    support: none
  platform:
    platforms: all
"""
