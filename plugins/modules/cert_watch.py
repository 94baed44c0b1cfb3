#!/usr/bin/python
# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

from __future__ import annotations


DOCUMENTATION = r"""
module: cert_watch
short_description: Detect a renewed TLS certificate and key, and check that they are usable
version_added: "1.0.0"
description:
  - Reads a PEM certificate (and optionally its private key) on the managed host, computes the SHA-256 fingerprint
    of the certificate and a digest of the key, and compares them with the state recorded by the previous run.
  - Reports C(changed) when the certificate or the key differs from the recorded state, including on the first run,
    and then records the new state. Notify a handler that restarts the service from this task, because services such as
    the distribution registry read their certificate only when they start.
  - Fails, without recording anything, when the certificate or key cannot be read, is not PEM, is truncated or
    damaged, when the key does not belong to the certificate, when the certificate has expired or expires within
    O(min_valid_days), and, with O(ca_path), when the certificate does not chain to that CA.
  - The fingerprint is taken over the DER encoding of the B(first) certificate in O(path); further certificates
    (a chain file) are checked for damage but otherwise ignored.
author:
  - actuated.registry maintainers (@self-actuated)
requirements:
  - The C(openssl) command line tool (OpenSSL 1.1.1 or newer) on the managed host.
options:
  path:
    description:
      - Absolute path on the managed host of the PEM certificate to watch, for example
        V(/var/lib/actuated/certs/server.crt).
      - The file may hold a chain; the first certificate in it is the one that is fingerprinted and checked.
    type: path
    required: true
  key_path:
    description:
      - Absolute path on the managed host of the PEM private key that belongs to the certificate, for example
        V(/var/lib/actuated/certs/server.key).
      - When set, the module checks that the key belongs to the certificate (their public keys are equal), and a
        change of the key file alone also reports C(changed).
      - The key must not be encrypted. Key material is never put on a command line; openssl is given the path.
    type: path
  state_path:
    description:
      - Absolute path on the managed host of the file where the module records the last seen state, as JSON with
        the keys C(fingerprint), C(key_digest) and C(recorded_at).
      - The file is written atomically with mode V(0600); its directory is created with mode V(0700) if missing.
      - Use one state file per watched certificate.
    type: path
    required: true
  min_valid_days:
    description:
      - Fail when the certificate expires in less than this many days (24-hour periods from now).
      - An expired certificate always fails, whether this is set or not.
    type: int
  ca_path:
    description:
      - Absolute path on the managed host of a PEM file with the CA certificate(s) that the certificate must chain to.
      - Certificates after the first one in O(path) are used as untrusted intermediates.
      - When not set, the chain is not checked.
    type: path
extends_documentation_fragment: [actuated.registry.attributes]
attributes:
  check_mode:
    details:
      - In check mode the module reads and checks the files and reports whether the state would change, but does
        not create or write the state file or its directory.
  diff_mode:
    details:
      - The diff shows the recorded and the current fingerprint (and key digest when O(key_path) is set).
  idempotent:
    details: This assumes that the watched files have not changed between the runs.
notes:
  - The module needs only the Python standard library and the C(openssl) command on the managed host. The fingerprint
    is computed in Python; C(openssl x509) provides the dates, names, serial and public key, C(openssl pkey) the public
    key of O(key_path), and C(openssl verify) checks the chain when O(ca_path) is set.
  - RV(fingerprint) is what C(openssl x509 -noout -fingerprint -sha256 -in PATH) prints for the first certificate,
    and RV(key_digest) is what C(sha256sum) prints for the key file.
  - The state records only digests, never key material. Removing the state file makes the next run report C(changed).
  - A certificate that is not valid yet (its C(notBefore) is in the future, for example because of clock skew)
    causes a warning, not a failure.
seealso:
  - module: community.crypto.x509_certificate_info
    description: Full information on a certificate, using the Python C(cryptography) library.
"""

EXAMPLES = r"""
---
- name: Watch the certificate actuated renews, and restart the registry when it changes
  actuated.registry.cert_watch:
    path: /var/lib/actuated/certs/server.crt
    key_path: /var/lib/actuated/certs/server.key
    state_path: /var/lib/registry/cert_watch/server.json
    min_valid_days: 2
  register: registry_cert
  notify: Restart registry

- name: Show how long the certificate is still valid
  ansible.builtin.debug:
    msg: >-
      {{ registry_cert.subject }} ({{ registry_cert.subject_alt_names | join(', ') }})
      expires on {{ registry_cert.not_after }}, in {{ registry_cert.days_remaining }} days

- name: Also check that the certificate chains to actuated's CA
  actuated.registry.cert_watch:
    path: /var/lib/actuated/certs/server.crt
    key_path: /var/lib/actuated/certs/server.key
    ca_path: /var/lib/actuated/certs/ca.crt
    state_path: /var/lib/registry/cert_watch/server.json

- name: Report a renewal without failing the play when the certificate is unusable
  actuated.registry.cert_watch:
    path: /var/lib/actuated/certs/server.crt
    state_path: /var/lib/registry/cert_watch/server.json
  register: cert_check
  ignore_errors: true

# In the role's handlers/main.yml:
# - name: Restart registry
#   ansible.builtin.systemd_service:
#     name: registry
#     state: restarted
"""

RETURN = r"""
fingerprint:
  description:
    - SHA-256 fingerprint of the DER encoding of the first certificate in O(path), as colon-separated upper-case hex
      (the form C(openssl x509 -fingerprint -sha256) prints).
  returned: success
  type: str
  sample: "D6:3E:BE:48:C6:89:F9:B1:74:66:FB:07:9E:7D:DD:12:2E:50:98:2B:04:B8:7A:BC:C9:3B:D9:44:B4:79:C2:0D"
previous_fingerprint:
  description:
    - The fingerprint recorded in O(state_path) before this run.
    - V(null) when nothing was recorded yet (or the state file was unreadable as JSON).
  returned: success
  type: str
  sample: "15:95:22:27:DF:6B:33:73:FD:B4:EE:BB:50:45:2B:4D:65:34:D9:6C:27:95:67:D7:32:D2:78:6C:63:AA:24:DB"
key_digest:
  description:
    - SHA-256 of the bytes of the O(key_path) file, as lower-case hex (what C(sha256sum) prints).
    - V(null) when O(key_path) is not set.
  returned: success
  type: str
  sample: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
previous_key_digest:
  description:
    - The key digest recorded in O(state_path) before this run.
    - V(null) when nothing was recorded yet or no key was watched then.
  returned: success
  type: str
  sample: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
not_before:
  description: Start of the certificate's validity period, ISO 8601 in UTC.
  returned: success
  type: str
  sample: "2026-11-27T18:00:00Z"
not_after:
  description: End of the certificate's validity period, ISO 8601 in UTC.
  returned: success
  type: str
  sample: "2027-02-25T18:00:00Z"
days_remaining:
  description: Whole days (24-hour periods, rounded down) from now until RV(not_after).
  returned: success
  type: int
  sample: 89
subject:
  description: The certificate's subject as an RFC 2253 string (the most specific attribute first).
  returned: success
  type: str
  sample: "O=actuated,CN=192.168.128.1"
issuer:
  description: The certificate's issuer as an RFC 2253 string.
  returned: success
  type: str
  sample: "CN=actuated CA"
serial:
  description: The certificate's serial number as upper-case hex without separators (as C(openssl x509 -serial) prints it).
  returned: success
  type: str
  sample: "014FE5E4862BE479B9DA19C7E393E70F435C9EA1"
subject_alt_names:
  description:
    - The entries of the certificate's subject alternative name extension, each prefixed with its type (V(IP), V(DNS),
      V(email), V(URI), V(dirName), V(RID), V(otherName)). IPv6 addresses are in their compressed form.
    - An empty list when the certificate has no such extension.
  returned: success
  type: list
  elements: str
  sample: ["IP:192.168.128.1", "DNS:localhost"]
key_matches:
  description:
    - V(true) when the private key in O(key_path) belongs to the certificate; V(null) when O(key_path) is not set.
    - A key that does not belong to the certificate fails the task, with this value V(false) in the failed result.
  returned: success
  type: bool
  sample: true
chain_verified:
  description:
    - V(true) when the certificate chains to the CA in O(ca_path); V(null) when O(ca_path) is not set.
    - A certificate that does not chain to the CA fails the task.
  returned: success
  type: bool
  sample: true
"""

import typing as t

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.actuated.registry.plugins.module_utils._certs import (
    CertificateInfo,
    CertWatchError,
    StateFileCorrupt,
    days_remaining,
    diff_text,
    first_certificate,
    first_private_key,
    format_iso8601,
    make_state,
    parse_public_key_output,
    parse_x509_output,
    read_file,
    read_state,
    sha256_fingerprint,
    sha256_hex,
    split_pem,
    summarize_openssl_error,
    utcnow,
    write_state_atomic,
)


# openssl's output is not localised, but keep messages and dates predictable anyway.
_OPENSSL_ENV = {"LC_ALL": "C", "LANG": "C"}


class CertWatch:
    """One run of the module: gather, check, compare, record."""

    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.path: str = module.params["path"]
        self.key_path: str | None = module.params["key_path"]
        self.state_path: str = module.params["state_path"]
        self.ca_path: str | None = module.params["ca_path"]
        self.min_valid_days: int | None = module.params["min_valid_days"]
        self.result: dict[str, t.Any] = {"changed": False}
        self._openssl: str | None = None

    def fail(self, msg: str) -> t.NoReturn:
        """Fail with an actionable message, keeping what was learnt so far in the result."""
        self.result.pop("changed", None)
        self.module.fail_json(msg=msg, **self.result)

    @property
    def openssl(self) -> str:
        if self._openssl is None:
            self._openssl = self.module.get_bin_path("openssl", required=True)
        return self._openssl

    def run_openssl(self, args: list[str], what: str) -> str:
        """Run openssl; on failure, fail with ``what`` and openssl's own explanation."""
        reply: tuple[int, str, str] = self.module.run_command([self.openssl] + args, environ_update=_OPENSSL_ENV)
        rc, out, err = reply
        if rc != 0:
            self.fail(f"{what}: openssl {args[0]} failed: {summarize_openssl_error(rc, out, err)}")
        return out

    def certificate_info(self, expected_fingerprint: str) -> CertificateInfo:
        out = self.run_openssl(
            [
                "x509", "-noout", "-in", self.path,
                "-fingerprint", "-sha256", "-dates", "-subject", "-issuer", "-serial",
                "-ext", "subjectAltName", "-pubkey", "-nameopt", "RFC2253",
            ],
            f"Cannot parse the certificate in {self.path}",
        )
        try:
            info = parse_x509_output(out)
        except (ValueError, CertWatchError) as exc:
            self.fail(f"Cannot parse the certificate in {self.path}: unexpected openssl output: {exc}")
        if info.fingerprint is not None and info.fingerprint != expected_fingerprint:
            self.fail(
                f"Cannot use certificate file {self.path}: openssl read a different certificate"
                f" ({info.fingerprint}) than the first CERTIFICATE block of the file ({expected_fingerprint})"
            )
        return info

    def check_key(self, info: CertificateInfo) -> None:
        """Check that the private key is readable and belongs to the certificate; record its digest."""
        if self.key_path is None:
            self.result.update(key_digest=None, key_matches=None)
            return
        try:
            data = read_file(self.key_path, "private key file")
            first_private_key(split_pem(data, self.key_path, "private key file"), self.key_path)
        except CertWatchError as exc:
            self.fail(str(exc))
        self.result["key_digest"] = sha256_hex(data)
        # "-passin pass:" makes openssl fail instead of prompting should the key be encrypted after all.
        out = self.run_openssl(
            ["pkey", "-in", self.key_path, "-pubout", "-passin", "pass:"],
            f"Cannot read the private key in {self.key_path}",
        )
        try:
            key_public = parse_public_key_output(out)
        except (ValueError, CertWatchError) as exc:
            self.fail(f"Cannot read the private key in {self.key_path}: unexpected openssl output: {exc}")
        if info.public_key_der is None:
            self.fail(f"Cannot read the public key of the certificate in {self.path}: openssl did not print it")
        self.result["key_matches"] = key_public == info.public_key_der
        if not self.result["key_matches"]:
            self.fail(
                f"Private key file {self.key_path} does not belong to the certificate in {self.path}"
                f" (subject {info.subject}): their public keys differ. Install the key that was issued with"
                f" this certificate."
            )

    def check_validity(self, info: CertificateInfo) -> None:
        now = utcnow()
        remaining = days_remaining(info.not_after, now)
        self.result["days_remaining"] = remaining
        not_after = format_iso8601(info.not_after)
        if info.not_after <= now:
            self.fail(
                f"Certificate {self.path} (subject {info.subject}) expired on {not_after}"
                f" ({-remaining} day(s) ago): renew it before (re)starting the service"
            )
        if self.min_valid_days is not None and remaining < self.min_valid_days:
            self.fail(
                f"Certificate {self.path} (subject {info.subject}) expires on {not_after}, in {remaining} day(s),"
                f" which is less than min_valid_days={self.min_valid_days}: renew it"
            )
        if info.not_before > now:
            self.module.warn(
                f"Certificate {self.path} is not valid before {format_iso8601(info.not_before)}; clients will"
                f" reject it until then (is the clock of this host or of the issuer wrong?)"
            )

    def check_chain(self) -> None:
        if self.ca_path is None:
            self.result["chain_verified"] = None
            return
        try:
            first_certificate(
                split_pem(read_file(self.ca_path, "CA file"), self.ca_path, "CA file"), self.ca_path, "CA file"
            )
        except CertWatchError as exc:
            self.fail(str(exc))
        rc, out, err = self.module.run_command(
            [self.openssl, "verify", "-CAfile", self.ca_path, "-untrusted", self.path, self.path],
            environ_update=_OPENSSL_ENV,
        )
        self.result["chain_verified"] = rc == 0
        if rc != 0:
            self.fail(
                f"Certificate {self.path} does not chain to the CA in {self.ca_path}:"
                f" {summarize_openssl_error(rc, out, err)}"
            )

    def run(self) -> None:
        if self.min_valid_days is not None and self.min_valid_days < 0:
            self.fail(f"min_valid_days must be 0 or more, got {self.min_valid_days}")
        try:
            data = read_file(self.path, "certificate file")
            cert = first_certificate(split_pem(data, self.path, "certificate file"), self.path)
        except CertWatchError as exc:
            self.fail(str(exc))
        fingerprint = sha256_fingerprint(cert.der)
        self.result["fingerprint"] = fingerprint

        info = self.certificate_info(fingerprint)
        self.result.update(
            not_before=format_iso8601(info.not_before),
            not_after=format_iso8601(info.not_after),
            subject=info.subject,
            issuer=info.issuer,
            serial=info.serial,
            subject_alt_names=info.subject_alt_names,
        )
        self.check_validity(info)
        self.check_key(info)
        self.check_chain()

        try:
            previous = read_state(self.state_path)
        except StateFileCorrupt as exc:
            self.module.warn(f"{exc}; starting over as if nothing had been recorded")
            previous = None
        except CertWatchError as exc:
            self.fail(str(exc))
        previous = previous or {}
        self.result.update(
            previous_fingerprint=previous.get("fingerprint"),
            previous_key_digest=previous.get("key_digest"),
        )
        key_digest = self.result["key_digest"]
        changed = previous.get("fingerprint") != fingerprint or previous.get("key_digest") != key_digest
        self.result["changed"] = changed

        if self.module._diff:
            with_key = self.key_path is not None
            self.result["diff"] = {
                "before": diff_text(previous.get("fingerprint"), previous.get("key_digest"), with_key),
                "after": diff_text(fingerprint, key_digest, with_key),
            }

        if changed and not self.module.check_mode:
            try:
                write_state_atomic(self.state_path, make_state(fingerprint, key_digest, utcnow()))
            except CertWatchError as exc:
                self.fail(str(exc))
        self.module.exit_json(**self.result)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "key_path": {"type": "path"},
            "state_path": {"type": "path", "required": True},
            "min_valid_days": {"type": "int"},
            "ca_path": {"type": "path"},
        },
        supports_check_mode=True,
    )
    CertWatch(module).run()


if __name__ == "__main__":
    main()
