"""A client certificate's URI SAN to a principal (D1: the certificate alone
says which tenant asks; nothing it does not spell exactly maps to anyone)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.core.identity import parse_principal_uri, uri_sans

DOMAIN = "shared-grid.test"
PREFIX = f"spiffe://{DOMAIN}/tenant/"


def test_a_principal_uri_names_tenant_kind_and_name() -> None:
    assert parse_principal_uri(f"{PREFIX}ores/service/hes-reader", DOMAIN) == (
        "ores", "service", "hes-reader")
    assert parse_principal_uri(f"{PREFIX}a/b/c", DOMAIN) == ("a", "b", "c")
    longest = "a" + "b" * 62
    assert parse_principal_uri(f"{PREFIX}{longest}/user/0-9", DOMAIN) == (
        longest, "user", "0-9")


@pytest.mark.parametrize("uri", [
    "spiffe://other.test/tenant/ores/service/x",  # another trust domain
    f"spiffe://{DOMAIN}.evil/tenant/ores/service/x",  # a domain that only starts alike
    f"spiffe://{DOMAIN}/tenants/ores/service/x",
    f"spiffe://{DOMAIN}/ores/service/x",
    f"https://{DOMAIN}/tenant/ores/service/x",
    f"SPIFFE://{DOMAIN}/tenant/ores/service/x",
    f"{PREFIX}ores/service",  # two segments
    f"{PREFIX}ores/service/x/y",  # four
    f"{PREFIX}ores/service/x/",  # a trailing slash is an empty fourth
    f"{PREFIX}ores//x",  # an empty segment
    f"{PREFIX}/service/x",
    f"{PREFIX}Ores/service/x",  # upper case
    f"{PREFIX}-ores/service/x",  # a leading hyphen
    f"{PREFIX}ores/ser_vice/x",
    f"{PREFIX}ores/service/x.y",
    f"{PREFIX}ores/service/x?tenant=fluvius",
    f"{PREFIX}ores/service/x#f",
    f"{PREFIX}ores/service/%78",
    f"{PREFIX}ores/service/x\n",
    f"{PREFIX}ores/service/\u0445",  # a Cyrillic letter that looks like x
    f"{PREFIX}{'a' * 64}/service/x",  # a segment past 63 characters
    "",
])
def test_anything_else_maps_to_nobody(uri: str) -> None:
    assert parse_principal_uri(uri, DOMAIN) is None


def test_the_trust_domain_is_the_callers() -> None:
    uri = "spiffe://other.test/tenant/ores/service/x"
    assert parse_principal_uri(uri, "other.test") == ("ores", "service", "x")
    assert parse_principal_uri(uri, DOMAIN) is None


@pytest.mark.parametrize(("peercert", "uris"), [
    ({"subjectAltName": (("URI", "spiffe://a/tenant/b/c/d"),)}, ["spiffe://a/tenant/b/c/d"]),
    ({"subjectAltName": (("DNS", "gateway.test"), ("URI", "u1"), ("email", "x@y"),
                         ("URI", "u2"))}, ["u1", "u2"]),
    ({"subjectAltName": (("DNS", "gateway.test"),)}, []),
    ({"subjectAltName": ()}, []),
    ({}, []),
    ({"subjectAltName": 5}, []),  # not a sequence at all
    ({"subjectAltName": (["URI", "u"], ("URI",), ("URI", "u", "x"), "URI")}, []),
    ({"subjectAltName": (("uri", "u"), ("URI ", "u"))}, []),  # the type's exact spelling
    ({"subjectAltName": (("URI", 7),)}, ["7"]),
])
def test_only_the_uri_entries_of_the_subject_alt_name(peercert: dict[str, Any],
                                                      uris: list[str]) -> None:
    assert uri_sans(peercert) == uris
