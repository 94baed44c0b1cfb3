# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT

"""registry_mirror_prefetch and registry_mirror_prefetch_interval (plugins/module_utils/_inputs_prefetch.py), through
validate() as the action plugin calls it: the normalised model, every error named after the variable, the entry and
the key, the rules with the fleet's variables, and the limits."""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest
import yaml

from ansible_collections.actuated.registry.plugins.module_utils import _inputs_basic as basic
from ansible_collections.actuated.registry.plugins.module_utils import _inputs_entries as entry_rules
from ansible_collections.actuated.registry.plugins.module_utils import _inputs_prefetch as prefetch
from ansible_collections.actuated.registry.plugins.module_utils import _mirror_inputs as rules

ROLE = Path(__file__).resolve().parents[4] / "roles" / "registry_mirror"
SPEC = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
P = "registry_mirror_prefetch"
INTERVAL = "registry_mirror_prefetch_interval"
TIER_MODE = {"registry_mirror_mode": "tier", "registry_mirror_bind_address": "10.20.0.5"}
TU_PASSWORD = "tu pa55 'S3CRET' word"


def run(overrides: dict[str, t.Any]) -> rules.Report:
    """validate() with the role's defaults and OVERRIDES."""
    values = {name: option.get("default") for name, option in SPEC.items()}
    values.update(overrides)
    return rules.validate(values, SPEC, defined=list(values), home="/home/operator")


def errors_of(*entries: t.Any, **overrides: t.Any) -> list[str]:
    """The errors of registry_mirror_prefetch set to ENTRIES (and OVERRIDES)."""
    report = run({P: list(entries), **overrides})
    assert report.prefetch == []  # the model is filled only without errors
    return report.errors


# ---- the model ------------------------------------------------------------------------------------------------------


def test_no_prefetch_by_default() -> None:
    report = run({})
    assert report.errors == [] and report.prefetch == []
    assert run({P: None}).prefetch == [] and run({P: []}).errors == []


def test_entries_are_normalised_with_their_defaults_in_the_order_given() -> None:
    report = run({P: [
        {"repository": "alpine"},
        {"repository": "bitnami/redis", "tags": ["7.2", "latest"], "platforms": ["linux/amd64", "linux/arm64/v8"]},
        {"repository": "docker.io/library/nginx", "tags": "1.27, stable", "platforms": None},
        {"repository": "index.docker.io/grafana/grafana", "tags": None},
        {"repository": "Docker.IO/node", "tags": [20, "20-alpine"]},
        {"repository": "a__b/c.d-e--f_g", "tags": ["_x", "A" * 128]},
    ]})
    assert report.errors == [] and report.warnings == []
    assert report.prefetch == [
        {"repository": "library/alpine", "tags": ["latest"], "platforms": []},
        {"repository": "bitnami/redis", "tags": ["7.2", "latest"], "platforms": ["linux/amd64", "linux/arm64/v8"]},
        {"repository": "library/nginx", "tags": ["1.27", "stable"], "platforms": []},
        {"repository": "grafana/grafana", "tags": ["latest"], "platforms": []},
        {"repository": "library/node", "tags": ["20", "20-alpine"], "platforms": []},
        {"repository": "a__b/c.d-e--f_g", "tags": ["_x", "A" * 128], "platforms": []},
    ]
    for entry in report.prefetch:
        assert list(entry) == list(prefetch.PREFETCH_OPTIONS)


def test_the_rest_of_the_model_is_unchanged() -> None:
    report = run({P: [{"repository": "alpine"}], INTERVAL: 30})
    assert report._replace(prefetch=[]) == run({})


def test_the_normalisation_does_not_change_the_variable() -> None:
    entries = [{"repository": "alpine", "tags": ["3.20"]}]
    run({P: entries})
    assert entries == [{"repository": "alpine", "tags": ["3.20"]}]


def test_a_report_built_without_prefetch_has_none() -> None:
    """The field is the last one, with a default: the reports built by position still work."""
    assert rules.Report._fields[-1] == "prefetch"
    assert rules.Report([], [], []).prefetch == []


@pytest.mark.parametrize("given,key", [
    ("alpine", "library/alpine"), ("library/alpine", "library/alpine"), ("docker.io/alpine", "library/alpine"),
    ("docker.io/library/alpine", "library/alpine"), ("index.docker.io/bitnami/redis", "bitnami/redis"),
    ("registry-1.docker.io/bitnami/redis", "bitnami/redis"), ("bitnami/redis", "bitnami/redis"),
    ("a/b/c", "a/b/c"), ("my.app", "library/my.app"), ("x" * 247, "library/" + "x" * 247),
])
def test_repository_key(given: str, key: str) -> None:
    assert prefetch.repository_key(given) == (key, None)


# ---- every problem, named precisely ---------------------------------------------------------------------------------

R = "registry_mirror_prefetch[0].repository"
GRAMMAR = ("which is not a Docker Hub repository name (path components of lower-case letters and digits, separated "
           "inside by ., _, __ or -, joined by /, at most 255 characters)")
TAG_GRAMMAR = "which is not a tag (a letter, digit or _, then up to 127 letters, digits, _, . or -)"
PLATFORM_TEXT = "give os/arch or os/arch/variant in lower case, such as linux/amd64 or linux/arm64/v8"

ENTRY_CASES: dict[str, tuple[t.Any, str]] = {
    # the entry
    "a string": ("alpine", f"{P}[0] must be a dictionary with repository and, optionally, tags and platforms (got str): "
                           "write {repository: 'alpine'}"),
    "a number": (5, f"{P}[0] must be a dictionary with repository and, optionally, tags and platforms (got int)"),
    "no repository": ({"tags": ["3.20"]}, f"{R} is missing: every image to prefetch needs repository"),
    "a null repository": ({"repository": None}, f"{R} is missing: every image to prefetch needs repository"),
    "an empty repository": ({"repository": ""}, f"{R} is empty: every image to prefetch needs repository"),
    "an unknown key": ({"repository": "alpine", "colour": "red"},
                       f"{P}[0] has the key 'colour', which is not an option of an image to prefetch (repository, tags, "
                       "platforms)"),
    "image for repository": ({"repository": "alpine", "image": "alpine"},
                             f"{P}[0] has the key 'image', which is not an option of an image to prefetch; did you mean "
                             "repository?"),
    "platform for platforms": ({"repository": "alpine", "platform": "linux/amd64"},
                               f"{P}[0] has the key 'platform', which is not an option of an image to prefetch; did you "
                               "mean platforms?"),
    "a misspelt key": ({"repository": "alpine", "platfroms": []},
                       f"{P}[0] has the key 'platfroms', which is not an option of an image to prefetch; did you mean "
                       "platforms?"),
    "repository a list": ({"repository": ["alpine"]}, f"{R} must be a string (got a list)"),
    "tags a dictionary": ({"repository": "alpine", "tags": {"a": 1}}, f"{P}[0].tags must be a list (got dict)"),
    "platforms a number": ({"repository": "alpine", "platforms": 64}, f"{P}[0].platforms must be a list (got int)"),
    # the repository
    "upper case": ({"repository": "Alpine"}, f"{R} is 'Alpine', with upper-case letters: Docker Hub's repository names are "
                                             "lower-case; write 'alpine'"),
    "a tag": ({"repository": "alpine:3.20"}, f"{R} is 'alpine:3.20', with a tag: give the repository alone ('alpine') and "
                                             "the tag in tags (['3.20'])"),
    "a tag after the host": ({"repository": "docker.io/bitnami/redis:7"},
                             f"{R} is 'docker.io/bitnami/redis:7', with a tag: give the repository alone ('bitnami/redis') "
                             "and the tag in tags (['7'])"),
    "a digest": ({"repository": "alpine@sha256:" + "0" * 64},
                 f"{R} is 'alpine@sha256:{'0' * 64}', with a digest: give the repository alone (prefetch follows tags; give "
                 "them in tags)"),
    "another registry": ({"repository": "ghcr.io/actuated/app"},
                         f"{R} is 'ghcr.io/actuated/app', an image of the registry 'ghcr.io': registry_mirror_prefetch keeps "
                         "images of Docker Hub warm (the mirror of registry_mirror_upstream_url) only"),
    "a registry with a port": ({"repository": "registry.lab:5000/app"},
                               f"{R} is 'registry.lab:5000/app', an image of the registry 'registry.lab:5000'"),
    "localhost": ({"repository": "localhost/app"}, f"{R} is 'localhost/app', an image of the registry 'localhost'"),
    "an empty component": ({"repository": "bitnami//redis"}, f"{R} is 'bitnami//redis', {GRAMMAR}"),
    "a trailing slash": ({"repository": "bitnami/"}, f"{R} is 'bitnami/', {GRAMMAR}"),
    "a leading separator": ({"repository": "-alpine"}, f"{R} is '-alpine', {GRAMMAR}"),
    "three underscores": ({"repository": "a___b"}, f"{R} is 'a___b', {GRAMMAR}"),
    "a space": ({"repository": "my app"}, f"{R} is 'my app', {GRAMMAR}"),
    "a newline": ({"repository": "alpine\nx"}, f"{R} is 'alpine\\nx', {GRAMMAR}"),
    "too long": ({"repository": "x" * 248}, f"{R} is 256 characters long (library/{'x' * 32}...): a repository name has at "
                                            "most 255"),
    # the tags
    "no tags": ({"repository": "alpine", "tags": []}, f"{P}[0].tags is empty: give at least one tag (leave tags out for "
                                                      "latest)"),
    "an empty string of tags": ({"repository": "alpine", "tags": ""}, f"{P}[0].tags is empty: give at least one tag"),
    "21 tags": ({"repository": "alpine", "tags": [f"t{n}" for n in range(21)]},
                f"{P}[0].tags lists 21 tags: at most 20 per repository"),
    "a tag with a space": ({"repository": "alpine", "tags": ["latest", "3 20"]}, f"{P}[0].tags[1] is '3 20', {TAG_GRAMMAR}"),
    "a tag starting with .": ({"repository": "alpine", "tags": [".x"]}, f"{P}[0].tags[0] is '.x', {TAG_GRAMMAR}"),
    "a tag of 129": ({"repository": "alpine", "tags": ["a" * 129]}, f"{P}[0].tags[0] is '{'a' * 75}...', {TAG_GRAMMAR}"),
    "an empty tag": ({"repository": "alpine", "tags": [""]}, f"{P}[0].tags[0] is '', {TAG_GRAMMAR}"),
    "a tag with a colon": ({"repository": "alpine", "tags": [":3.20"]}, f"{P}[0].tags[0] is ':3.20': write '3.20', without "
                                                                        "the :"),
    "a digest for a tag": ({"repository": "alpine", "tags": ["sha256:abc"]},
                           f"{P}[0].tags[0] is 'sha256:abc', a digest: give tag names (prefetch follows tags)"),
    "a float tag": ({"repository": "alpine", "tags": [1.1]},
                    f"{P}[0].tags[0] is 1.1, which is not a string (got float): quote tags in YAML (unquoted, 1.10 is the "
                    "number 1.1)"),
    "a boolean tag": ({"repository": "alpine", "tags": [True]}, f"{P}[0].tags[0] is 'True', which is not a string (got bool)"),
    "a tag twice": ({"repository": "alpine", "tags": ["3.20", "latest", "3.20"]},
                    f"{P}[0].tags[2] is '3.20', the same as {P}[0].tags[0]: give each tag once"),
    "a number and its string": ({"repository": "node", "tags": [20, "20"]},
                                f"{P}[0].tags[1] is '20', the same as {P}[0].tags[0]: give each tag once"),
    # the platforms
    "a platform without arch": ({"repository": "alpine", "platforms": ["linux"]},
                                f"{P}[0].platforms[0] is 'linux', which is not a platform: {PLATFORM_TEXT}"),
    "a platform with four parts": ({"repository": "alpine", "platforms": ["linux/arm/v7/x"]},
                                   f"{P}[0].platforms[0] is 'linux/arm/v7/x', which is not a platform: {PLATFORM_TEXT}"),
    "a platform with an alias in capitals": ({"repository": "alpine", "platforms": ["Linux/X86_64"]},
                                             f"{P}[0].platforms[0] is 'Linux/X86_64': Docker Hub's image indexes call that "
                                             "platform linux/amd64; write 'linux/amd64'"),
    "a platform with a space": ({"repository": "alpine", "platforms": ["linux/ amd64"]},
                                f"{P}[0].platforms[0] is 'linux/ amd64', which is not a platform"),
    "a platform in capitals": ({"repository": "alpine", "platforms": ["Linux/AMD64"]},
                               f"{P}[0].platforms[0] is 'Linux/AMD64', with upper-case letters: write 'linux/amd64'"),
    "uname's x86_64": ({"repository": "alpine", "platforms": ["linux/x86_64"]},
                       f"{P}[0].platforms[0] is 'linux/x86_64': Docker Hub's image indexes call that platform linux/amd64; "
                       "write 'linux/amd64'"),
    "uname's aarch64": ({"repository": "alpine", "platforms": ["linux/aarch64"]},
                        f"{P}[0].platforms[0] is 'linux/aarch64': Docker Hub's image indexes call that platform linux/arm64; "
                        "write 'linux/arm64'"),
    "armv7l": ({"repository": "alpine", "platforms": ["linux/armv7l"]}, f"{P}[0].platforms[0] is 'linux/armv7l': Docker "
                                                                        "Hub's image indexes call that platform linux/arm/v7"),
    "a platform not a string": ({"repository": "alpine", "platforms": [["linux", "amd64"]]},
                                f"{P}[0].platforms[0] is \"['linux', 'amd64']\", which is not a string (got list): "
                                f"{PLATFORM_TEXT}"),
    "a platform twice": ({"repository": "alpine", "platforms": ["linux/amd64", "linux/arm64", "linux/amd64"]},
                         f"{P}[0].platforms[2] is 'linux/amd64', the same as {P}[0].platforms[0]: give each platform once"),
}


@pytest.mark.parametrize("case", sorted(ENTRY_CASES))
def test_each_problem_names_the_entry_and_the_key(case: str) -> None:
    item, message = ENTRY_CASES[case]
    errors = errors_of(item)
    assert len(errors) == 1, errors
    assert errors[0].startswith(message), errors


def test_a_later_entry_is_named_by_its_index() -> None:
    errors = errors_of({"repository": "alpine"}, {"repository": "bitnami/redis"}, {"repository": "nginx", "tags": ["ok", "a b"]})
    assert errors == [f"{P}[2].tags[1] is 'a b', {TAG_GRAMMAR}"]


@pytest.mark.parametrize("second,shown", [("alpine", "'alpine' (library/alpine)"), ("library/alpine", "'library/alpine'"),
                                          ("docker.io/alpine", "'docker.io/alpine' (library/alpine)")])
def test_a_repository_twice_after_normalisation(second: str, shown: str) -> None:
    errors = errors_of({"repository": "alpine", "tags": ["3.20"]}, {"repository": "bitnami/redis"},
                       {"repository": second, "tags": ["latest"]})
    assert errors == [f"{P}[2].repository is {shown}, the same as {P}[0].repository: give each repository once, with all its "
                      "tags"]


def test_a_repository_twice_is_named_even_when_the_first_entry_has_another_problem() -> None:
    errors = errors_of({"repository": "alpine", "tags": []}, {"repository": "alpine"})
    assert errors == [f"{P}[0].tags is empty: give at least one tag (leave tags out for latest)",
                      f"{P}[1].repository is 'alpine' (library/alpine), the same as {P}[0].repository: give each repository "
                      "once, with all its tags"]


def test_every_problem_is_reported_at_once() -> None:
    errors = errors_of({"repository": "Alpine", "tags": ["a b", "ok", "ok"], "platforms": ["linux"], "tag": "x"}, "redis",
                       {"tags": ["latest"]})
    assert [error.split(" ", 1)[0] for error in errors] == [
        f"{P}[0]", f"{P}[0].repository", f"{P}[0].tags[0]", f"{P}[0].tags[2]", f"{P}[0].platforms[0]", f"{P}[1]",
        f"{P}[2].repository"]


def test_the_whole_variable() -> None:
    assert run({P: {"repository": "alpine"}}).errors == [f"{P} must be a list (got dict)"]
    assert run({P: 5}).errors == [f"{P} must be a list (got int)"]


# ---- the limits -----------------------------------------------------------------------------------------------------


def test_at_most_100_repositories() -> None:
    assert run({P: [{"repository": f"r{n}"} for n in range(100)]}).errors == []
    errors = errors_of(*({"repository": f"r{n}"} for n in range(101)))
    assert errors == [f"{P} lists 101 images: at most 100"]


def test_every_entry_is_checked_beyond_the_limit() -> None:
    errors = errors_of(*({"repository": f"r{n}"} for n in range(100)), {"repository": "R"})
    assert [error.split(" ", 1)[0] for error in errors] == [P, f"{P}[100].repository"]


def test_at_most_20_tags() -> None:
    report = run({P: [{"repository": "alpine", "tags": [f"t{n}" for n in range(20)]}]})
    assert report.errors == [] and len(report.prefetch[0]["tags"]) == 20


def test_a_repository_of_255_characters() -> None:
    assert run({P: [{"repository": "a/" + "b" * 253}]}).prefetch == [{"repository": "a/" + "b" * 253, "tags": ["latest"],
                                                                      "platforms": []}]
    assert errors_of({"repository": "a/" + "b" * 254})[0].startswith(f"{R} is 256 characters long")


@pytest.mark.parametrize("minutes,accepted", [(5, True), (60, True), (1440, True), ("30", True), (4, False), (0, False),
                                              (-60, False), (1441, False)])
def test_the_interval(minutes: t.Any, accepted: bool) -> None:
    errors = run({INTERVAL: minutes}).errors
    assert errors == ([] if accepted else [f"{INTERVAL} is {int(minutes)}: it must be between 5 and 1440 minutes"])


def test_the_interval_is_an_integer() -> None:
    assert run({INTERVAL: "1h"}).errors == [f"{INTERVAL} must be an integer (got '1h')"]
    assert run({INTERVAL: True}).errors == [f"{INTERVAL} must be an integer (got 'True')"]


# ---- with the fleet's variables -------------------------------------------------------------------------------------

EDGE_WITH_TIERS = (f"{P} is set while registry_mirror_tiers names the site's tiers: set {P} on the site's tiers "
                   "(registry_mirror_mode: tier): an edge pulls through them")
TIER_WITH_USERS = (f"{P} on a tier whose registry asks for accounts (registry_mirror_tier_users) needs the caching "
                   "front (registry_mirror_front: true): without it the prefetch would need one of the edges' accounts")
NO_FRONT = {"registry_mirror_front": False}


def test_an_edge_with_tiers_refuses_prefetch() -> None:
    tiers = [{"url": "https://tier1.site.test:5000"}]
    assert errors_of({"repository": "alpine"}, registry_mirror_tiers=tiers) == [EDGE_WITH_TIERS]
    # Its own problems are named too.
    assert errors_of({"repository": "Alpine"}, registry_mirror_tiers=tiers)[1:] == [EDGE_WITH_TIERS]
    # An empty list is no prefetch; an edge without tiers prefetches.
    assert run({P: [], "registry_mirror_tiers": tiers}).errors == []
    assert run({P: [{"repository": "alpine"}], "registry_mirror_tiers": []}).errors == []


def test_a_tier_with_accounts_prefetches_behind_the_front_only() -> None:
    """Behind the front (the default) the prefetch pulls through the registry's root-only socket, where no account is
    asked; without it the registry asks the edges' accounts of every client."""
    report = run({P: [{"repository": "alpine"}], **TIER_MODE})
    assert report.errors == [] and report.prefetch == [{"repository": "library/alpine", "tags": ["latest"], "platforms": []}]
    users = [{"username": "edge", "password": TU_PASSWORD}]
    assert run({P: [{"repository": "alpine"}], "registry_mirror_tier_users": users, **TIER_MODE}).errors == []
    errors = errors_of({"repository": "alpine"}, registry_mirror_tier_users=users, **TIER_MODE, **NO_FRONT)
    assert errors == [TIER_WITH_USERS] and TU_PASSWORD not in "\n".join(errors)
    assert run({P: [], "registry_mirror_tier_users": users, **TIER_MODE, **NO_FRONT}).errors == []
    assert run({P: [{"repository": "alpine"}], **TIER_MODE, **NO_FRONT}).errors == []


def test_a_tier_with_an_invalid_account_is_refused_prefetch_too() -> None:
    """A set list counts, whatever is wrong inside it."""
    errors = errors_of({"repository": "alpine"}, registry_mirror_tier_users=[{"username": "edge", "password": ""}],
                       **TIER_MODE, **NO_FRONT)
    assert errors[-1] == TIER_WITH_USERS


# ---- the spec and the defaults --------------------------------------------------------------------------------------


def test_the_prefetch_keys_are_the_specs() -> None:
    option = SPEC[P]
    assert (option["type"], option["elements"], option["default"]) == ("list", "dict", [])
    assert {key: sub["type"] for key, sub in option["options"].items()} == prefetch.PREFETCH_OPTIONS
    assert {key for key, sub in option["options"].items() if sub.get("required")} == set(prefetch.PREFETCH_REQUIRED)
    assert option["options"]["tags"]["default"] == list(prefetch.PREFETCH_DEFAULT_TAGS)
    assert option["options"]["platforms"]["default"] == []
    assert all(sub.get("elements", "str") == "str" for sub in option["options"].values())
    assert not any(sub.get("no_log") for sub in option["options"].values())
    assert (SPEC[INTERVAL]["type"], SPEC[INTERVAL]["default"]) == ("int", 60)
    assert basic.RANGES[INTERVAL] == (5, 1440, "minutes")
    assert "registry-prefetch.timer" in " ".join(option["description"])


def test_the_defaults() -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    assert defaults[P] == SPEC[P]["default"] == []
    assert defaults[INTERVAL] == SPEC[INTERVAL]["default"] == 60


def test_prefetch_is_a_list_of_entries_without_secrets() -> None:
    """The shared entry checks know it; a templating error inside it may be shown (nothing in it is secret)."""
    kind = entry_rules.ENTRY_LISTS[P]
    assert kind.options == prefetch.PREFETCH_OPTIONS and kind.secrets == () and kind.label_key == ""
    assert P in rules.ENTRY_LISTS and P not in rules.VARIABLES_WITH_SECRETS
    assert entry_rules.entry_label(P, 3, {"repository": "alpine"}) == f"{P}[3]"
