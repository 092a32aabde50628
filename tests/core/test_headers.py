from __future__ import annotations

import pytest

from gateway.core.headers import HeaderRejected, clean_request_headers, response_headers


def test_identity_and_hop_by_hop_headers_never_forwarded() -> None:
    clean = clean_request_headers([
        ("Accept", "application/json"),
        ("X-Tenant", "fluvius"), ("X-Tenant-Id", "fluvius"),
        ("X-Forwarded-For", "10.0.0.1"), ("X-Forwarded-Client-Cert", "By=spiffe://x"),
        ("Forwarded", "for=1.2.3.4"), ("Authorization", "Bearer stolen"),
        ("X-Gateway-Assertion", "forged.jwt.token"),
        ("Connection", "close, X-Foo"), ("Keep-Alive", "timeout=5"), ("TE", "trailers"),
        ("Transfer-Encoding", "chunked"), ("Upgrade", "h2c"), ("X-Foo", "bar"),
        ("Cookie", "s=1"), ("Host", "localhost"),
    ])
    assert clean.forward == {"accept": "application/json"}
    assert set(clean.dropped_identity) >= {"x-tenant", "x-tenant-id", "x-forwarded-for",
                                           "x-forwarded-client-cert", "forwarded",
                                           "authorization", "x-gateway-assertion"}


@pytest.mark.parametrize("name", ["X_Tenant", "x_forwarded_for", "Accept_Language"])
def test_underscore_header_names_are_refused(name: str) -> None:
    with pytest.raises(HeaderRejected) as info:
        clean_request_headers([(name, "v")])
    assert (info.value.reason, info.value.status) == ("header-name-underscore", 400)


def test_repeated_forwarded_header_is_refused() -> None:
    with pytest.raises(HeaderRejected) as info:
        clean_request_headers([("Idempotency-Key", "a"), ("idempotency-key", "b")])
    assert (info.value.reason, info.value.status) == ("header-repeated", 400)


def test_response_headers_allow_list() -> None:
    out, labels = response_headers([("ETag", '"1"'), ("Server", "sim/1.0"),
                                    ("Set-Cookie", "x=1"), ("X-Powered-By", "aiohttp"),
                                    ("cache-CONTROL", "no-store")], "x-label")
    assert out == {"ETag": '"1"', "cache-CONTROL": "no-store"} and labels == []


def test_response_headers_name_every_label_sent_in_any_case() -> None:
    """D11: every value of the label field, its name in any case, in order;
    a label is never passed back as a header of its own."""
    out, labels = response_headers([("X-Label", "C2"), ("ETag", '"1"'), ("x-LABEL", "C4"),
                                    ("X-Labels", "C1")], "x-label")
    assert out == {"ETag": '"1"'} and labels == ["C2", "C4"]
