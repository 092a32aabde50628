"""The data plane's answer (gateway.edge.Answer): what the lean server
writes, and what aiohttp's server gets when the data listener runs on it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gateway.edge import Answer
from gateway.edge._lean_wire import serialize


def test_the_reason_is_the_statuss_phrase_unless_given() -> None:
    assert Answer(200).reason == "OK"
    assert Answer(503).reason == "Service Unavailable"
    assert Answer(599).reason == ""  # no phrase known: none written, as aiohttp
    assert Answer(200, reason="Fine").reason == "Fine"


def test_a_new_status_brings_its_own_phrase() -> None:
    """The audit write failing turns a 200 into a 503 (no trace, no answer):
    its status line must not say "OK"."""
    answer = Answer(200, b"{}", content_type="application/json")
    answer.set_status(503)
    assert (answer.status, answer.reason) == (503, "Service Unavailable")
    head, _ = serialize(SimpleNamespace(method="GET", version=(1, 1)), answer, True)
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")


def test_headers_are_one_name_in_any_case() -> None:
    answer = Answer(200, b"x", {"x-request-id": "abc"}, content_type="text/plain")
    assert answer.headers["X-Request-Id"] == "abc"
    answer.content_type = "application/problem+json"
    assert answer.headers.getall("content-type") == ["application/problem+json"]
    assert answer.content_type == "application/problem+json"
    answer.headers["Content-Type"] = "Application/JSON; charset=utf-8"
    assert answer.content_type == "application/json"
    assert Answer(204).content_type == ""


def test_content_type_replaces_one_given_in_the_headers() -> None:
    answer = Answer(200, b"x", {"Content-Type": "text/plain"}, content_type="application/json")
    assert answer.headers.getall("Content-Type") == ["application/json"]


def test_headers_given_as_pairs_keep_repeated_names() -> None:
    answer = Answer(200, b"", [("Vary", "a"), ("vary", "b")])
    assert answer.headers.getall("Vary") == ["a", "b"]


def test_an_answer_keeps_the_connection_until_forced_closed() -> None:
    answer = Answer(200)
    assert answer.keep_alive is None
    answer.force_close()
    assert answer.keep_alive is False
    head, _ = serialize(SimpleNamespace(method="GET", version=(1, 1)), answer,
                        answer.keep_alive is not False)
    assert b"\r\nConnection: close\r\n" in head


@pytest.mark.parametrize("close", [False, True])
def test_on_aiohttps_server_it_is_the_same_response(close: bool) -> None:
    answer = Answer(404, b'{"a":1}', {"Server": "gateway", "X-Request-Id": "abc"},
                    content_type="application/problem+json")
    if close:
        answer.force_close()
    web = answer.to_web()
    assert (web.status, web.reason, web.body) == (404, "Not Found", b'{"a":1}')
    assert list(web.headers.items()) == [("Server", "gateway"), ("X-Request-Id", "abc"),
                                         ("Content-Type", "application/problem+json")]
    assert web.keep_alive is (False if close else None)


def test_the_writer_refuses_a_body_that_is_not_bytes() -> None:
    answer = Answer(200)
    answer.body = "text"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="bytes"):
        serialize(SimpleNamespace(method="GET", version=(1, 1)), answer, True)
