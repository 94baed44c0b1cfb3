# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

from __future__ import annotations


DOCUMENTATION = r"""
module: fleet_ca
short_description: Keep the fleet's CA on the controller and issue the tier mirrors' certificates
version_added: "1.0.0"
description:
  - Runs on the controller only. Keeps a small certificate authority in the directory O(dir) and issues one server
    certificate per tier mirror, which the edge mirrors verify when they pull through the tier.
  - When C(DIR/ca.crt) and C(DIR/ca.key) exist, they are used after checking that the key belongs to the certificate
    and that the certificate is a CA (C(basicConstraints) C(CA:TRUE), C(keyCertSign) if it has a C(keyUsage)). An
    existing CA is never overwritten; a CA with only one of its two files, a key that does not match, an encrypted
    key or an expired CA fails the task with what to do.
  - Otherwise a new CA is created - an EC P-256 key (C(ca.key), mode V(0600)) and a self-signed certificate
    (C(ca.crt), mode V(0644)) with the subject C(CN=ca_common_name), valid for O(ca_days) days, with C(basicConstraints)
    C(CA:TRUE, pathlen:0) (critical), C(keyUsage) C(keyCertSign, cRLSign) (critical) and a subject key identifier.
  - Issues C(DIR/tiers/NAME.crt) and C(DIR/tiers/NAME.key) (EC P-256, mode V(0600)) for the tier O(name) -
    C(CN=NAME), C(basicConstraints) C(CA:FALSE) (critical), C(keyUsage) C(digitalSignature) (critical),
    C(extendedKeyUsage) C(serverAuth), a C(subjectAltName) with exactly O(addresses) (C(IP) entries for IP addresses,
    C(DNS) entries for names), subject and authority key identifiers - signed by the CA with SHA-256.
  - A tier certificate is issued only when it or its key is missing or unreadable, when it is not signed by this CA,
    when the key does not belong to it, when its subject alternative names differ from O(addresses) (in any order),
    or when it expires within O(renew_before_days) days. A second run with the same arguments changes nothing.
  - Every file is written atomically (a temporary file in the same directory, its mode set, then renamed). The
    directory O(dir) (and C(DIR/tiers)) is created with mode V(0700) when missing.
  - Several hosts may run the task at the same time (forks) with the same O(dir) - for example every tier host with
    its own O(name) - an exclusive C(flock) on C(DIR/.fleet_ca.lock) is held while the CA is read or created and the
    certificate issued, so exactly one CA is created.
  - Key material is never returned, logged or shown in a diff.
author:
  - actuated.registry contributors (@self-actuated)
requirements:
  - The Python library C(cryptography) on the controller (a dependency of ansible-core).
options:
  dir:
    description:
      - The controller directory that holds the CA (C(ca.crt), C(ca.key)) and the tier certificates (C(tiers/)).
      - A relative path is relative to the directory C(ansible-playbook) runs in; prefer an absolute one such as
        V({{ inventory_dir }}/fleet-ca).
      - Keep it private, and back it up - the edge mirrors trust its CA.
    type: path
    required: true
  name:
    description:
      - The tier's name, usually C(inventory_hostname); it names the files C(tiers/NAME.crt) and C(tiers/NAME.key) and
        is the certificate's common name (its first 64 characters).
      - Letters, digits, C(.), C(_) and C(-), not starting with C(.) or C(-), at most 200 characters.
    type: str
    required: true
  addresses:
    description:
      - The IP addresses and DNS names the tier's certificate names (its C(subjectAltName)), at least one.
      - IPv4 and IPv6 addresses become C(IP) entries; anything else must be a DNS name (a leading C(*.) label is
        allowed) and becomes a lower-case C(DNS) entry. Duplicates are dropped.
    type: list
    elements: str
    required: true
  ca_common_name:
    description:
      - The common name of a new CA (1 to 64 characters). An existing CA keeps its name.
    type: str
    default: actuated.registry fleet CA
  ca_days:
    description:
      - How many days a new CA is valid. An existing CA keeps its dates.
    type: int
    default: 3650
  days:
    description:
      - How many days a new tier certificate is valid (it never outlives the CA).
    type: int
    default: 397
  renew_before_days:
    description:
      - Issue a new tier certificate when the current one expires within this many days.
      - Must be less than O(days).
    type: int
    default: 30
extends_documentation_fragment: [action_common_attributes, action_common_attributes.conn, action_common_attributes.flow,
                                 actuated.registry.attributes.controller]
attributes:
  check_mode:
    support: full
    details: Reads the CA and the tier certificate and reports what would be created or issued, but writes nothing.
  diff_mode:
    support: full
    details:
      - One diff per file that is created or issued - the certificate's subject, issuer, subject alternative names
        and end of validity before and after. Never key material.
notes:
  - The CA key is EC P-256 rather than RSA 3072 - the same security level as RSA 3072 for a fraction of the key size
    and signing time (generating it in many forks at once costs nothing noticeable), and accepted by every TLS
    client of a registry (Go's C(crypto/tls) in distribution, Docker, containerd and buildkit).
  - The CA's C(pathlen:0) lets it sign server certificates only, not intermediate CAs.
  - Copy RV(ca_cert) to the edge mirrors as the CA to trust, and RV(cert) and RV(key) to the tier host (with
    C(no_log) or at least C(diff) off for the key).
seealso:
  - module: community.crypto.x509_certificate
    description: General certificate management with the same C(cryptography) library.
"""

EXAMPLES = r"""
---
- name: Issue this tier's certificate from the fleet CA (created on the first run)
  actuated.registry.fleet_ca:
    dir: "{{ inventory_dir }}/fleet-ca"
    name: "{{ inventory_hostname }}"
    addresses:
      - "{{ ansible_host }}"
      - tier-1.registry.example
  register: tier_cert

- name: Install the certificate and its key on the tier host
  ansible.builtin.copy:
    src: "{{ item.src }}"
    dest: "/etc/registry/tier/{{ item.dest }}"
    owner: root
    group: registry
    mode: "{{ item.mode }}"
  loop:
    - {src: "{{ tier_cert.cert }}", dest: tier.crt, mode: "0644"}
    - {src: "{{ tier_cert.key }}", dest: tier.key, mode: "0640"}
  no_log: true
  diff: false
"""

RETURN = r"""
ca_cert:
  description: Absolute path on the controller of the CA certificate (C(DIR/ca.crt)), the file edge mirrors trust.
  returned: success
  type: str
  sample: /srv/ansible/fleet-ca/ca.crt
cert:
  description: Absolute path on the controller of the tier's certificate (C(DIR/tiers/NAME.crt)).
  returned: success
  type: str
  sample: /srv/ansible/fleet-ca/tiers/tier-1.crt
key:
  description: Absolute path on the controller of the tier's private key (C(DIR/tiers/NAME.key), mode V(0600)).
  returned: success
  type: str
  sample: /srv/ansible/fleet-ca/tiers/tier-1.key
ca_created:
  description: Whether the CA was created by this run (in check mode - whether it would be).
  returned: success
  type: bool
  sample: false
issued:
  description: Whether a tier certificate was issued by this run (in check mode - whether it would be).
  returned: success
  type: bool
  sample: true
reason:
  description:
    - Why the tier certificate was issued - V(missing), V(the certificate cannot be read), V(not signed by this CA),
      V(the key cannot be read), V(the key does not belong to the certificate),
      V(the subject alternative names differ), V(it expires within N days) or V(it has expired).
    - V(null) when it was not issued.
  returned: success
  type: str
  sample: the subject alternative names differ
not_after:
  description: End of validity of the tier certificate (the new one when issued), ISO 8601 in UTC.
  returned: success
  type: str
  sample: "2027-12-02T10:15:00Z"
sans:
  description: The subject alternative names of the tier certificate, each prefixed with its type.
  returned: success
  type: list
  elements: str
  sample: ["IP:192.168.128.10", "DNS:tier-1.registry.example"]
"""
