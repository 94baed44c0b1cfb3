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
  - Checks the fleet variables together with C(registry_mirror_mode) - an edge (the default) takes
    C(registry_mirror_tiers) and C(registry_mirror_tier_ca) and no Docker Hub token when it has tiers; a tier takes
    C(registry_mirror_tier_users), C(registry_mirror_tier_tls_certificate) and C(registry_mirror_tier_tls_key),
    C(registry_mirror_tier_names), and listens on an address of the site's network (never C(auto) nor actuated's
    bridge) - and refuses a variable of the other mode that is set (not empty).
  - Refuses a listen address that is globally routable or a documentation address, whatever the mode; an edge's
    address other than actuated's bridge or C(auto) without C(registry_mirror_bind_any_private_address), or one
    that is not private (RFC 1918, link-local) with it; a tier's address that is not private without
    C(registry_mirror_tier_users).
  - Checks C(registry_mirror_prefetch) - Docker Hub repositories (each once, C(alpine) meaning C(library/alpine)),
    their tags and platforms - and refuses it on an edge with C(registry_mirror_tiers) (the tiers prefetch; the edges
    pull through them) and, for now, on a tier with C(registry_mirror_tier_users).
  - Warns when a user name looks like a token (C(registry_mirror_dockerhub_username), an upstream's or a tier's
    C(username), a C(registry_mirror_tier_users) name), naming the variable and never showing the value.
  - Fails on a C(registry_mirror_*) variable that the role does not know, naming the closest known one; with
    C(registry_mirror_unknown_variables=warn) that is a warning instead.
  - With O(host_report) (the output of the role's read-only inspection command) it checks what the host has instead
    - existing accounts (never root, never one the role did not create unless
    C(registry_mirror_existing_accounts) lists it, never one whose primary group differs) and existing directories
    (the storage and configuration directories and each upstream's C(storage_dir); never a symbolic link, never one
    that resolves to a system directory, never one that belongs to another account)
    - and returns what it found.
  - Messages never contain the value of C(registry_mirror_dockerhub_username) or C(registry_mirror_dockerhub_token),
    nor of an upstream's C(username) or C(password) in C(registry_mirror_upstreams), nor of a tier's C(username) or
    C(password) in C(registry_mirror_tiers), nor of a C(password) in C(registry_mirror_tier_users), at any
    verbosity - only what is wrong with it (empty, a newline, a control character, whitespace, a non-ASCII
    character, a character the environment file would interpret, longer than bcrypt's 72 bytes).
  - Returns the model the role renders from, without secrets - C(registry_mirror_upstreams) normalised
    (RV(upstreams)), the Docker Hub mirror in the same shape (RV(primary)), C(registry_mirror_tiers) (RV(tiers)), the
    user names of C(registry_mirror_tier_users) (RV(tier_users)), C(registry_mirror_tier_names) as a list
    (RV(tier_names)), C(registry_mirror_prefetch) normalised (RV(prefetch)) and the paths the role derives
    (RV(upstreams_dir), RV(release_base_url), RV(controller_dirs)).
    A secret stays in its variable; an entry says where it is (RV(upstreams[].index), RV(tiers[].index)).
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
extends_documentation_fragment: [action_common_attributes, action_common_attributes.conn, action_common_attributes.flow,
                                 actuated.registry.attributes.controller]
attributes:
  check_mode:
    support: full
    details: Reads only; the same in check mode.
  diff_mode:
    support: none
notes:
  - The rules themselves live in the collection's private module utilities C(_mirror_inputs) (C(validate)) and
    C(_inputs_*) (by concern), unit-tested without a host.
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
controller_dirs:
  description:
    - The controller's directories, keyed by variable (C(registry_mirror_local_cache_dir),
      C(registry_mirror_fleet_ca_dir)), as the controller resolves them - a leading C(~) is the controller's home, and
      a path that is not normalised (C({{ playbook_dir }}/../cache)) is resolved through its symbolic links. The role
      uses these, never the raw variables.
  returned: when the input checks pass (not with O(host_report))
  type: dict
  sample:
    registry_mirror_local_cache_dir: /home/operator/.cache/actuated.registry
    registry_mirror_fleet_ca_dir: /home/operator/.local/share/actuated.registry/fleet-ca
upstreams:
  description:
    - C(registry_mirror_upstreams) normalised, in the order given - the same list from the same variables with and
      without O(host_report). Every key is filled in with its default, the URL is lower-case without a trailing
      C(/), the secrets are left out.
    - The role writes the credentials of an entry with RV(upstreams[].credentials) into a root-only environment file
      as C(<credentials_env>_USERNAME) and C(<credentials_env>_PASSWORD).
  returned: when the checks pass
  type: list
  elements: dict
  contains:
    name:
      description: The entry's name (its directories, its journal lines).
      type: str
    url:
      description: The upstream, lower-case scheme and host, without a trailing C(/).
      type: str
    registry:
      description: The registry host name clients pull from (lower-case); by default the host of RV(upstreams[].url).
      type: str
    port:
      description: The mirror's port on the bridge.
      type: int
    metrics_port:
      description: The metrics listener's loopback port (by default RV(upstreams[].port) + 1).
      type: int
    supervisor_port:
      description: The supervisor's loopback port (by default RV(upstreams[].port) + 2).
      type: int
    ttl:
      description: The proxy TTL (a Go duration; by default C(registry_mirror_proxy_ttl)).
      type: str
    storage_dir:
      description: The cache's directory (by default C(registry_mirror_storage_dir) + C(-) + RV(upstreams[].name)).
      type: str
    cache_budget_mb:
      description: The cache's budget in MiB (by default C(registry_mirror_cache_budget_mb)).
      type: int
    cache_budget_percent:
      description: The cache's budget as a share of its filesystem (by default 10).
      type: int
    allow_http:
      description: Whether a plain C(http://) URL is allowed.
      type: bool
    credentials:
      description: Whether the entry has a user name and password (never returned themselves).
      type: bool
    credentials_env:
      description: C(REGISTRY_MIRROR_) and the name in upper case with C(_) for C(-).
      type: str
    index:
      description:
        - The entry's place in C(registry_mirror_upstreams), from 1 - where a template finds its user name and
          password.
      type: int
    fallbacks:
      description: None - only the Docker Hub mirror of an edge with tiers has some (RV(primary)).
      type: list
      elements: dict
    config_file:
      description: Its registry configuration, C(<registry_mirror_config_dir>/upstreams/<name>/config.yml).
      type: str
    settings_file:
      description: Its supervisor's settings, C(supervisor.json) next to RV(upstreams[].config_file).
      type: str
    env_file:
      description: Its root-only credentials file, C(proxy.env) next to RV(upstreams[].config_file).
      type: str
    socket:
      description:
        - The unix socket its registry serves the caching front on (C(registry_mirror_front)),
          C(/run/registry/<name>.sock).
      type: str
  sample:
    - name: ghcr
      url: https://ghcr.io
      registry: ghcr.io
      port: 5010
      metrics_port: 5011
      supervisor_port: 5012
      ttl: 168h
      storage_dir: /var/lib/registry-ghcr
      cache_budget_mb: 40960
      cache_budget_percent: 10
      allow_http: false
      credentials: true
      credentials_env: REGISTRY_MIRROR_GHCR
      index: 1
      fallbacks: []
      config_file: /etc/registry/upstreams/ghcr/config.yml
      settings_file: /etc/registry/upstreams/ghcr/supervisor.json
      env_file: /etc/registry/upstreams/ghcr/proxy.env
      socket: /run/registry/ghcr.sock
primary:
  description:
    - The Docker Hub mirror, with the keys of an entry of RV(upstreams) - C(name) C(docker-hub), C(registry)
      C(docker.io), C(url) C(registry_mirror_upstream_url) without a trailing C(/) (on an edge with tiers, the first
      tier's), C(port), C(metrics_port), C(supervisor_port), C(ttl), C(storage_dir), C(cache_budget_mb) and
      C(cache_budget_percent) from the C(registry_mirror_*) variables, C(allow_http) from
      C(registry_mirror_upstream_allow_http), its files in C(registry_mirror_config_dir), C(credentials_env) empty and
      C(index) 0 (its credentials are the Docker Hub account's, or on an edge with tiers the tiers').
    - C(credentials) says whether the role writes its C(proxy.env). C(fallbacks), on an edge with tiers, lists what its
      supervisor tries after C(url) in order - the other tiers, then Docker Hub anonymously - each as C(url) and
      C(credentials) (the tier's RV(tiers[].credentials_env), or empty).
  returned: when the input checks pass (not with O(host_report))
  type: dict
  sample:
    name: docker-hub
    url: https://registry-1.docker.io
    registry: docker.io
    port: 5000
    metrics_port: 5001
    supervisor_port: 5002
    ttl: 168h
    storage_dir: /var/lib/registry
    cache_budget_mb: 40960
    cache_budget_percent: 25
    allow_http: false
    credentials: true
    credentials_env: ""
    index: 0
    fallbacks: []
    config_file: /etc/registry/config.yml
    settings_file: /etc/registry/supervisor.json
    env_file: /etc/registry/proxy.env
    socket: /run/registry/docker-hub.sock
tier_names:
  description:
    - C(registry_mirror_tier_names) as a list (a comma-separated string split, each part trimmed, empty ones dropped).
  returned: when the input checks pass (not with O(host_report))
  type: list
  elements: str
  sample: [tier1.site.example, 10.20.0.5]
prefetch:
  description:
    - C(registry_mirror_prefetch) normalised, in the order given - the Docker Hub images the Docker Hub mirror keeps
      warm. Empty without prefetch.
  returned: when the input checks pass (not with O(host_report))
  type: list
  elements: dict
  contains:
    repository:
      description:
        - The repository as Docker Hub names it - an official image with its namespace (C(alpine) is
          C(library/alpine)), without a leading C(docker.io/).
      type: str
    tags:
      description: The tags to keep warm, each once, in the order given; C([latest]) when the entry gives none.
      type: list
      elements: str
    platforms:
      description: The platforms to pull (C(os/arch) or C(os/arch/variant)), each once; empty for the host's own.
      type: list
      elements: str
  sample:
    - repository: library/alpine
      tags: ["3.20", latest]
      platforms: []
    - repository: bitnami/redis
      tags: [latest]
      platforms: [linux/amd64, linux/arm64/v8]
upstreams_dir:
  description: The directory of the further upstreams' directories (C(<registry_mirror_config_dir>/upstreams)).
  returned: when the input checks pass (not with O(host_report))
  type: str
  sample: /etc/registry/upstreams
release_base_url:
  description: C(registry_mirror_release_base_url) without a trailing C(/).
  returned: when the input checks pass (not with O(host_report))
  type: str
  sample: https://github.com/distribution/distribution/releases/download
bridge_addresses:
  description: actuated's VM bridge addresses, which C(registry_mirror_bind_address=auto) chooses from.
  returned: when the input checks pass (not with O(host_report))
  type: list
  elements: str
  sample: [192.168.128.1, 192.168.129.1]
tiers:
  description:
    - C(registry_mirror_tiers) (an edge's tiers) in the order given, without secrets - the same list from the same
      variables with and without O(host_report). Empty without tiers.
    - The role writes the credentials of an entry with RV(tiers[].credentials) into the mirror's root-only
      C(proxy.env) as C(<credentials_env>_USERNAME) and C(<credentials_env>_PASSWORD).
  returned: when the checks pass
  type: list
  elements: dict
  contains:
    url:
      description: The tier, lower-case scheme and host, without a trailing C(/).
      type: str
    index:
      description: Its place in the list, from 1 (the order in which the edge tries the tiers).
      type: int
    credentials:
      description: Whether the entry has a user name and password (never returned themselves).
      type: bool
    credentials_env:
      description: C(REGISTRY_MIRROR_TIER) and RV(tiers[].index).
      type: str
  sample:
    - url: https://tier1.site.example:5000
      index: 1
      credentials: true
      credentials_env: REGISTRY_MIRROR_TIER1
tier_users:
  description:
    - The user names of C(registry_mirror_tier_users) (a tier's accounts), in the order given; never their passwords.
      Empty without accounts.
  returned: when the checks pass
  type: list
  elements: str
  sample:
    - edge
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
