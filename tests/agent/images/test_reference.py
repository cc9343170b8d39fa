"""Image references: the Distribution grammar, what is a registry, and the one-line errors."""
from __future__ import annotations

import pytest

from cantainer_agent.images.errors import BadReference
from cantainer_agent.images.reference import Reference, looks_like_registry, parse_local, parse_reference

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text, expected", [
    ("registry.example.org/team/app", Reference("registry.example.org", "team/app", "latest", None)),
    ("localhost:5000/app:1.0", Reference("localhost:5000", "app", "1.0", None)),
    ("10.1.2.3:5000/a/b/c:v1.2-rc_3", Reference("10.1.2.3:5000", "a/b/c", "v1.2-rc_3", None)),
    (f"reg.io/app@{D}", Reference("reg.io", "app", None, D)),
    (f"reg.io/app:1@{D}", Reference("reg.io", "app", "1", D)),
    ("localhost/my.app__x-y", Reference("localhost", "my.app__x-y", "latest", None)),
])
def test_registry_references(text, expected):
    reference = parse_reference(text)
    assert reference == expected
    assert reference.reference == (expected.digest or expected.tag)


def test_str_round_trips_and_with_digest_pins():
    reference = parse_reference("reg.io:443/team/app:1.0")
    assert str(reference) == "reg.io:443/team/app:1.0" and reference.name == "reg.io:443/team/app"
    pinned = reference.with_digest(D)
    assert str(pinned) == f"reg.io:443/team/app:1.0@{D}" and pinned.reference == D


@pytest.mark.parametrize("text", ["alpine", "app:1.0", "team/app", "docker.io", "a.b"])
def test_names_without_a_registry_host(text):
    assert not looks_like_registry(text)
    with pytest.raises(BadReference, match="names no registry"):
        parse_reference(text)


@pytest.mark.parametrize("text, fragment", [
    ("reg.io/App", "repository"),
    ("reg.io/app:", "not a valid tag"),
    ("reg.io/app:-x", "not a valid tag"),
    ("reg.io/app@sha512:" + "a" * 128, "only sha256"),
    ("reg.io/app@sha256:xyz", "not a digest"),
    ("reg.io:99999/app", "out of range"),
    ("-bad.io/app", "registry host"),
    ("reg.io/" + "a" * 260, "longer than"),
    (" reg.io/app", "not a valid reference"),
])
def test_bad_references_say_what_is_wrong(text, fragment):
    with pytest.raises(BadReference, match=fragment):
        parse_reference(text)


def test_local_names():
    assert parse_local("app") == Reference("", "app", "latest", None)
    assert parse_local("team/app:v2") == Reference("", "team/app", "v2", None)
    assert parse_local("reg.io:5000/app:v2").registry == "reg.io:5000"
    with pytest.raises(BadReference):
        parse_local("App:1")
