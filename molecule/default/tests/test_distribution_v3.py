# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""distribution 3.x behaviour the role relies on, proven on the version users get by default.

These tests converge the mirror again once with other settings (a short proxy.ttl and tag cache, metrics and
troubleshooting mode on: one re-converge for all of them, as each costs about 40 s) and end with a converge back to
the scenario's settings. The role logic they exercise does not depend on the architecture, so they run on amd64 (the default scenario proves
3.1.1 itself on arm64 too).
"""
from __future__ import annotations

import re
import time

import pytest
from conftest import DEFAULT_VERSION, MIRROR, amd64_only, journal, metric, reconverge, since, world

TTL_SECONDS = 15
# The caching front serves a tag from its own cache this long (registry_mirror_tag_cache_seconds; the role's default
# is 60) before distribution is asked again, and finds it expired: short here, so that the expiry comes sooner.
TAG_CACHE_SECONDS = 5
IMAGE = "library/small3"


@pytest.fixture(scope="module")
def v3_settings(converge, vm):
    """The mirror with a short TTL, metrics and troubleshooting mode on; converged back to the scenario's settings
    afterwards."""
    reconverge(converge, vm, f"registry_mirror_proxy_ttl={TTL_SECONDS}s", "registry_mirror_metrics_enabled=true",
               "registry_mirror_troubleshooting=true", f"registry_mirror_tag_cache_seconds={TAG_CACHE_SECONDS}")
    yield
    reconverge(converge, vm)


@amd64_only
def test_default_version_runs(host):
    assert host.check_output("/usr/local/bin/registry --version").split()[-1].lstrip("v") == DEFAULT_VERSION


@amd64_only
def test_short_ttl_expires_content_that_the_next_pull_fetches_through_the_upstream(host, vm, hub, v3_settings):
    start = since(host)
    hub.reset()
    assert vm.pull(f"{MIRROR}/{IMAGE}:latest", "amd64", "/tmp/ttl").returncode == 0
    assert hub.pulls().get(world.HUB_USERNAME) == 1
    assert vm.pull(f"{MIRROR}/{IMAGE}:latest", "amd64", "/tmp/ttl").returncode == 0
    assert hub.pulls().get(world.HUB_USERNAME) == 1, "a cached image was fetched again before its TTL"
    deadline = time.monotonic() + TTL_SECONDS + TAG_CACHE_SECONDS + 45
    while time.monotonic() < deadline and hub.pulls().get(world.HUB_USERNAME) == 1:
        time.sleep(3)
        pulled = vm.pull(f"{MIRROR}/{IMAGE}:latest", "amd64", "/tmp/ttl")
        assert pulled.returncode == 0, pulled.stderr
    assert hub.pulls().get(world.HUB_USERNAME) == 2, "the manifest did not expire and was not fetched again"
    assert "Scheduler error" not in journal(host, start)


@amd64_only
def test_push_and_delete_stay_refused_with_deletes_enabled_for_the_ttl(host, vm, v3_settings):
    assert "enabled: true" in host.file("/etc/registry/config.yml").content_string
    code = vm.sh(f"curl -sS -o /dev/null -w '%{{http_code}}' -X DELETE https://{MIRROR}/v2/{IMAGE}/manifests/latest").stdout
    assert code == "405", code
    upload = vm.sh(f"curl -sS -o /dev/null -w '%{{http_code}}' -X POST https://{MIRROR}/v2/library/pushed/blobs/uploads/").stdout
    assert upload == "405", upload


@amd64_only
def test_proxy_counters_on_the_loopback_metrics_port(host, vm, v3_settings):
    assert vm.pull(f"{MIRROR}/library/small1:latest", "amd64", "/tmp/metrics").returncode == 0
    text = host.check_output("curl -sS http://127.0.0.1:5001/metrics")
    assert metric(text, "registry_proxy_requests_total", "manifest") >= 1
    assert metric(text, "registry_proxy_hits_total", "manifest") + metric(text, "registry_proxy_misses_total", "manifest") >= 1
    assert metric(text, "registry_proxy_pulled_bytes_total", "blob") > 0
    assert vm.sh("curl -sS --connect-timeout 3 http://192.168.128.1:5001/metrics", check=False).returncode != 0


@amd64_only
def test_no_opentelemetry_export_attempts_in_the_journal(host, vm, v3_settings):
    start = since(host)
    assert vm.pull(f"{MIRROR}/library/small2:latest", "amd64", "/tmp/otel").returncode == 0
    time.sleep(6)  # the span batch processor exports every 5 s
    logged = journal(host, start)
    assert "4318" not in logged and "traces export" not in logged, logged[-2000:]


@amd64_only
def test_troubleshooting_mode_logs_requests_without_trace_spans(host, vm, v3_settings):
    start = since(host)
    assert vm.pull(f"{MIRROR}/library/alpine:latest", "amd64", "/tmp/troubleshooting").returncode == 0
    time.sleep(6)  # spans, if any, would be logged by now (the batch processor exports every 5 s)
    request = r'"GET /v2/library/alpine/manifests/latest HTTP/[0-9.]+" 200'
    deadline = time.monotonic() + 60  # a guard against a hang, not a limit: the access line must come
    logged = journal(host, start)
    while not re.search(request, logged) and time.monotonic() < deadline:
        time.sleep(1)
        logged = journal(host, start)
    assert re.search(request, logged), logged[-2000:]
    assert "SpanContext" not in logged and '"TraceID"' not in logged, "trace spans in the log"
