# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""registry_settings: the supervisor's settings file, checked as a whole (Settings.load) before anything starts, each
problem named by its key."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from registry_fakes import FILES
from test_registry_supervisor_front import SOCKET, settings_file

if str(FILES) not in sys.path:
    sys.path.insert(0, str(FILES))
import registry_settings


@pytest.mark.parametrize(("content", "error"), [
    ({"binary": "/r", "config": "/c", "upstream": "https://u"}, "missing version"),
    ({"binary": "/r", "config": "/c", "upstream": "https://u", "version": "3.1.1", "probe_intervall": 3},
     "unknown setting 'probe_intervall'"),
    ({"binary": "/r", "config": "/c", "upstream": "https://u", "version": "3.1.1", "metrics": "yes"},
     "metrics must be true or false"),
    ({"binary": "/r", "config": "/c", "upstream": "https://u", "version": "3.1.1", "min_free_mb": -1},
     "min_free_mb must be a whole number >= 0"),
    ({"binary": "/r", "config": "/c", "upstream": "https://u", "version": "3.1.1", "storage": ""},
     "storage must be a non-empty string"),
    ({"binary": "/r", "config": "/c", "upstream": "https://u", "version": "latest"}, "not a distribution version"),
])
def test_invalid_settings_are_refused_naming_the_problem(tmp_path: Path, content: dict[str, object],
                                                         error: str) -> None:
    path = tmp_path / "supervisor.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(registry_settings.SettingsError, match=error):
        registry_settings.Settings.load(str(path))


def test_settings_as_the_role_writes_them(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.json"
    path.write_text(json.dumps({"_comment": "Ansible managed", "binary": "/usr/local/bin/registry",
                                "config": "/etc/registry/config.yml", "upstream": "https://registry-1.docker.io/",
                                "version": "3.1.1", "offline_fallback": True, "metrics": False,
                                "probe_interval": 15, "storage": "/var/lib/registry", "min_free_mb": 2048}),
                    encoding="utf-8")
    settings = registry_settings.Settings.load(str(path))
    assert settings.upstream == "https://registry-1.docker.io"
    assert (settings.probe_interval, settings.probe_timeout, settings.confirm_after) == (15, 3.0, 1.0)
    assert (settings.start_probe_timeout, settings.failures_before_fallback, settings.stop_timeout) == (2.0, 2, 70.0)
    assert (settings.storage, settings.min_free_mb) == ("/var/lib/registry", 2048)


@pytest.mark.parametrize("listen", [SOCKET, "unix:/" + "s" * 106])  # 107 bytes: the longest sun_path takes
def test_a_unix_socket_with_an_absolute_path_and_plain_http_is_a_valid_listen(tmp_path: Path, listen: str) -> None:
    path = settings_file(tmp_path, listen=listen, listen_tls=False, front_log=True, port=5001)
    settings = registry_settings.Settings.load(str(path))
    assert (settings.listen, settings.listen_tls, settings.front_log) == (listen, False, True)
    assert registry_settings.unix_path(settings.listen) == listen[len("unix:"):]
    assert registry_settings.unix_path("127.0.0.1:5000") == ""


@pytest.mark.parametrize(("values", "error"), [
    ({"listen": "unix:run/registry/dockerhub.sock"}, "a unix socket must be unix: followed by an absolute path"),
    ({"listen": "unix:"}, "a unix socket must be unix: followed by an absolute path"),
    ({"listen": "unix:/run/registry/"}, "a unix socket must be unix: followed by an absolute path"),
    ({"listen": "unix:/run/registry/a\u0000b.sock"}, "without NUL"),
    ({"listen": "unix:/" + "s" * 107}, "a unix socket's path must be shorter than 108 bytes, not 108"),
    ({"listen": "unix:/run/" + "\u00e9" * 52}, "must be shorter than 108 bytes, not 109"),  # bytes, not characters
])
def test_an_invalid_unix_socket_is_refused_naming_the_key(tmp_path: Path, values: dict[str, Any], error: str) -> None:
    with pytest.raises(registry_settings.SettingsError, match=f"listen .*{error}"):
        registry_settings.Settings.load(str(settings_file(tmp_path, listen_tls=False, **values)))


@pytest.mark.parametrize("tls", [{"listen_tls": True}, {}])  # said, or left at its default
def test_tls_on_a_unix_socket_is_refused(tmp_path: Path, tls: dict[str, bool]) -> None:
    with pytest.raises(registry_settings.SettingsError, match="listen_tls must be false with a unix socket in listen"):
        registry_settings.Settings.load(str(settings_file(tmp_path, listen=SOCKET, **tls)))
    # A TCP listen keeps its TLS.
    path = settings_file(tmp_path, listen="0.0.0.0:5000", listen_tls=True)
    assert registry_settings.Settings.load(str(path)).listen_tls


def test_front_log_must_be_a_boolean(tmp_path: Path) -> None:
    with pytest.raises(registry_settings.SettingsError, match="front_log must be true or false"):
        registry_settings.Settings.load(str(settings_file(tmp_path, front_log="yes")))
    assert not registry_settings.Settings.load(str(settings_file(tmp_path))).front_log


@pytest.mark.parametrize(("values", "error"), [
    ({"ca_dir": "/etc/registry/tier-ca"}, "ca_dir needs ca_upstreams"),
    ({"ca_dir": "tier-ca", "ca_upstreams": ["https://tier-a.example:5000"]}, "ca_dir must be an absolute path"),
    ({"ca_dir": "/a:/b", "ca_upstreams": ["https://tier-a.example:5000"]}, "ca_dir must be an absolute path"),
    ({"ca_upstreams": "https://tier-a.example:5000"}, "ca_upstreams must be a list of upstream URLs"),
    ({"ca_upstreams": ["https://elsewhere.example"]},
     r"ca_upstreams\[0\] https://elsewhere.example is neither the upstream nor a fallback's url"),
    ({"listener_timeout": 0}, "listener_timeout and health_timeout must be more than 0"),
])
def test_invalid_ca_dir_and_health_settings_are_refused(tmp_path: Path, values: dict[str, Any], error: str) -> None:
    path = tmp_path / "supervisor.json"
    path.write_text(json.dumps({"binary": "/r", "config": "/c", "upstream": "https://tier-a.example:5000",
                                "version": "3.1.1", **values}), encoding="utf-8")
    with pytest.raises(registry_settings.SettingsError, match=error):
        registry_settings.Settings.load(str(path))
