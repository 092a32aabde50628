"""The route table: a template's segments, the fast path of a route whose
resource id is in its path, and what a lookup answers when the method does
not match (the 405's ``Allow``). Routes are built here, at test time, so the
construction itself is what is checked."""

from __future__ import annotations

from gateway.core.identifiers import is_valid_meter_serial
from gateway.core.routes import ResourceRef, Route, RouteTable

GRANTS = {"dso": frozenset({"owner"})}
METER = "1SAG0000000001"


def meter_route(method: str = "GET", template: str = "/hes/meters/{serial}",
                window: str | None = None) -> Route:
    return Route("hes", method, template, GRANTS,
                 resource=ResourceRef("meter", "path", "serial"), window=window)


def test_a_template_s_segments() -> None:
    assert meter_route().segments == ("hes", "meters", "{serial}")
    assert meter_route(template="/hes/meters/{serial}/").segments == ("hes", "meters", "{serial}")
    assert Route("itsm", "GET", "/X-ray/{id}", GRANTS).segments == ("X-ray", "{id}")


def test_the_fast_path_of_a_resource_in_the_path() -> None:
    fast = meter_route().path_resource
    assert fast is not None
    kind, name, syntax = fast
    assert (kind, name) == ("meter", "serial")
    assert bool(syntax(METER)) and bool(syntax(METER)) == is_valid_meter_serial(METER)
    assert not syntax("not a serial")
    assert not syntax("meter-1")  # a plain id, but no meter serial: the meter's own syntax
    # Not for a resource in the query or the body, nor for a route with a window.
    assert meter_route(window="day").path_resource is None
    assert Route("hes", "GET", "/hes/meters", GRANTS,
                 resource=ResourceRef("meter", "query", "serial")).path_resource is None
    assert Route("hes", "GET", "/hes/meters", GRANTS).path_resource is None


def test_a_lookup_binds_the_parameters() -> None:
    table = RouteTable([meter_route(), Route("itsm", "GET", "/X-ray/{id}", GRANTS)])
    found = table.lookup("GET", f"/hes/meters/{METER}")
    assert found.match is not None and found.match.params == {"serial": METER}
    assert found.match.route is table.routes[0]
    ray = table.lookup("GET", "/X-ray/7")
    assert ray.match is not None and ray.match.params == {"id": "7"}


def test_another_method_on_a_known_path_names_the_allowed_ones_once_sorted() -> None:
    table = RouteTable([meter_route("POST"), meter_route("GET"),
                        meter_route("POST", "/hes/meters/{id}")])
    found = table.lookup("DELETE", f"/hes/meters/{METER}")
    assert (found.match, found.allowed_methods) == (None, ("GET", "POST"))
    assert table.lookup("GET", "/hes/other/x").allowed_methods == ()


def test_a_parameter_takes_one_segment_of_1_to_64_allowed_characters() -> None:
    table = RouteTable([meter_route(), meter_route(template="/hes/meters/{serial}/readings")])
    for value in ("a", "A.z_0-9", "x" * 64):
        found = table.lookup("GET", f"/hes/meters/{value}")
        assert found.match is not None and found.match.params == {"serial": value}, value
    for value in ("x" * 65, "a b", "a%2Fb", "a:b", "a+b", "ü", "a\n", "*", "a;b"):
        found = table.lookup("GET", f"/hes/meters/{value}")
        assert (found.match, found.allowed_methods) == (None, ()), value
    # An empty segment is no value; a parameter never spans a "/".
    assert table.lookup("GET", "/hes/meters//readings").match is None
    assert table.lookup("GET", "/hes/meters/a/b").match is None
    nested = table.lookup("GET", f"/hes/meters/{METER}/readings")
    assert nested.match is not None and nested.match.route is table.routes[1]


def test_literal_segments_match_exactly() -> None:
    table = RouteTable([meter_route(), Route("itsm", "GET", "/X-ray/{id}", GRANTS),
                        Route("itsm", "GET", "/itsm/v1.0/{id}", GRANTS)])
    for path in ("/itsm/v1x0/7", "/itsm/v1.00/7", "/hes/Meters/1", "/HES/meters/1",
                 "/hes/meter/1", "/hes/metersx/1", "/hes/meters.1", "/Xxray/7", "/X-rayy/7",
                 "/x-ray/7"):
        assert table.lookup("GET", path).match is None, path
    # Slashes around the path are not segments.
    assert table.lookup("GET", "/itsm/v1.0/7").match is not None
    found = table.lookup("GET", f"hes/meters/{METER}/")
    assert found.match is not None and found.match.params == {"serial": METER}


def test_a_one_record_route_names_the_strings_its_response_check_reads() -> None:
    """``record_fields``: the response check's fast path (a one-record answer
    proven in C, only these members made) is for a route whose check reads
    nothing else; any other route parses its answers in full."""
    from gateway.core.catalog import ROUTES
    from gateway.core.routes import RecordCheck

    detail = RecordCheck("meter", "serial", same_as_request=True)
    timed = RecordCheck("meter", "meter", at_field="timestamp", window_field="day")
    assert Route("hes", "GET", "/hes/meters/{serial}", GRANTS,
                 records=(detail,)).record_fields == ("serial",)
    # Every field the checks read, each once, in order.
    assert Route("hes", "GET", "/r/{serial}", GRANTS, records=(detail, timed, detail)
                 ).record_fields == ("serial", "meter", "timestamp", "day")
    assert Route("hes", "GET", "/r", GRANTS,
                 records=(RecordCheck("meter", "m", at_field="m", window_field="m"),)
                 ).record_fields == ("m",)
    assert Route("hes", "GET", "/r", GRANTS).record_fields == ()  # nothing to read: proven only
    # Records in a list, a field rule (it edits the body), a notification
    # (it sends the body on): the full parse.
    listed = RecordCheck("meter", "serial", items="meters")
    assert Route("hes", "GET", "/r", GRANTS, records=(detail, listed)).record_fields is None
    assert Route("hes", "GET", "/r", GRANTS, records=(detail,),
                 field_rules=("clearing.restricted",)).record_fields is None
    assert Route("hes", "GET", "/r", GRANTS, records=(detail,),
                 notify="cmh-status").record_fields is None
    # More names than the C reads: the full parse.
    many = tuple(RecordCheck("meter", f"f{i}", at_field=f"a{i}") for i in range(4))
    assert Route("hes", "GET", "/r", GRANTS, records=many[:4]).record_fields == (
        "f0", "a0", "f1", "a1", "f2", "a2", "f3", "a3")
    assert Route("hes", "GET", "/r", GRANTS,
                 records=(*many, RecordCheck("meter", "f9"))).record_fields is None
    # The catalog: the meter's and an ITSM record's detail take it; no route
    # with a field rule or a notification does.
    by_name = {(r.method, r.template): r for r in ROUTES}
    assert by_name["GET", "/hes/meters/{serial}"].record_fields == ("serial",)
    assert by_name["GET", "/hes/meters"].record_fields is None
    assert all(r.record_fields is None for r in ROUTES if r.field_rules or r.notify)


def test_a_list_route_names_its_list_and_the_strings_its_response_check_reads() -> None:
    """``listed_fields``: the same fast path for a list answer (each record's
    named strings, proven in C) is for a route of one record check with
    ``items`` that reads nothing else; any other route parses in full."""
    from gateway.core.catalog import ROUTES
    from gateway.core.routes import RecordCheck

    readings = RecordCheck("meter", "meter", items="readings", at_field="timestamp",
                           window_field="timestamp")
    assert Route("hes", "GET", "/r", GRANTS, records=(readings,)).listed_fields == (
        "readings", ("meter", "timestamp"))
    windowed = RecordCheck("ean", "ean", items="readings", window_field="date")
    assert Route("hes", "GET", "/r", GRANTS, records=(windowed,)).listed_fields == (
        "readings", ("ean", "date"))
    # A one-record route is record_fields', not this; two checks, a field
    # rule (it edits the body), a notification (it sends the body on): the
    # full parse.
    detail = RecordCheck("meter", "serial", same_as_request=True)
    assert Route("hes", "GET", "/r", GRANTS, records=(detail,)).listed_fields is None
    assert Route("hes", "GET", "/r", GRANTS).listed_fields is None
    assert Route("hes", "GET", "/r", GRANTS, records=(readings, windowed)).listed_fields is None
    assert Route("hes", "GET", "/r", GRANTS, records=(detail, readings)).listed_fields is None
    assert Route("hes", "GET", "/r", GRANTS, records=(readings,),
                 field_rules=("clearing.restricted",)).listed_fields is None
    assert Route("hes", "GET", "/r", GRANTS, records=(readings,),
                 notify="cmh-status").listed_fields is None
    by_name = {(r.method, r.template): r for r in ROUTES}
    assert by_name["GET", "/hes/meters"].listed_fields == ("meters", ("serial",))
    assert by_name["GET", "/hes/meters/{serial}/readings"].listed_fields == (
        "readings", ("meter", "timestamp"))
    assert by_name["GET", "/itsm/tickets"].listed_fields == ("tickets", ("id",))
    assert by_name["GET", "/hes/meters/{serial}"].listed_fields is None
    assert all(r.listed_fields is None for r in ROUTES if r.field_rules or r.notify)
    assert all(r.record_fields is None or r.listed_fields is None for r in ROUTES)
