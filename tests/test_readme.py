"""The README tour names concrete ids; this keeps them true for the dataset
the demo generates (ids are deterministic; contract dates follow today)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from gateway.demo._dataset import generate
from gateway.tenants import load_tenants

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_quickstart_commands_exist() -> None:
    assert "make demo" in README and "make test" in README
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_tour_ids_match_the_demo_dataset() -> None:
    now = datetime.now(UTC)
    ds = generate(load_tenants(REPO / "tenants"), now)
    owner = {m["serial"]: m["owners"][-1]["tenant"] for m in ds.meters}
    assert "1SAG8286366805" in README and owner["1SAG8286366805"] == "ores"
    assert "1SAG1369116532" in README and owner["1SAG1369116532"] == "fluvius"
    ap = next(a for a in ds.access_points if a["ean"] == "541448141228997421")
    assert ap["restricted"]["initiator"] == "mosa-energie" and ap["grid_operator"] == "ores"
    running = {c["supplier"] for c in ap["contracts"]
               if c["valid_from"] <= now.isoformat() < c["valid_to"]}
    assert running == {"mosa-energie", "kempen-power"}
    first = ds.cmh_requests[0]
    assert first["id"] == f"CMH{now:%Y}0001"
    assert "proximus" in {c["operator"] for c in first["connections"]}


def _shell_blocks() -> list[str]:
    """The README's sh blocks, continuation lines joined."""
    return [block.replace("\\\n", " ")
            for block in re.findall(r"^```sh\n(.*?)^```", README, re.S | re.M)]


def _commands() -> list[str]:
    """Every command line of the sh blocks and every inline `gateway ...` that
    is a concrete command (not a synopsis with FILE, DIR or [options])."""
    lines = [line.split("  #")[0].strip() for block in _shell_blocks()
             for line in block.splitlines()]
    inline = [span for span in re.findall(r"`(gateway [^`]+)`", README)
              if not re.search(r"FILE|DIR|\[|\||<", span)]
    return [line for line in lines + inline if line and not line.startswith("#")]


# Written where the person installs it (a directory of their $fpath), not
# into the repository.
ELSEWHERE = frozenset({"gateway completion zsh > _gateway"})


def _written_files() -> list[tuple[str, str]]:
    """(command, path) for each file or directory a README command writes."""
    out = []
    for command in _commands():
        if command in ELSEWHERE:
            continue
        for path in re.findall(r"--out\s+(\S+)", command):
            out.append((command, path))
        for path in re.findall(r"(?<![0-9&])>\s*([^\s&|>]+)", command):
            out.append((command, path))
    return out


def test_recipes_write_their_files_under_var() -> None:
    written = _written_files()
    assert len(written) >= 10  # csr, issue, approve, pending, review, backup, audit keys...
    loose = [(command, path) for command, path in written if not path.startswith("var/")]
    assert not loose, f"README commands writing outside var/: {loose}"


def test_each_written_file_has_its_directory_made_before() -> None:
    """Pasted in order, no command fails for a missing directory: ``var/``
    exists once the demo ran, ``mkdir -p`` or ``certs csr --out DIR`` (which
    creates DIR) made the others, ``state backup`` creates its own."""
    made = {"var"}
    for command in _commands():
        if command in ELSEWHERE:
            continue
        for path in re.findall(r"mkdir -p\s+(\S+)", command):
            made.update(str(p) for p in (Path(path), *Path(path).parents))
        if command.startswith("gateway certs csr"):
            directory = re.findall(r"--out\s+(\S+)", command)[0]
            made.add(directory)
            continue
        for path in re.findall(r"--out\s+(\S+)", command) + re.findall(
                r"(?<![0-9&])>\s*([^\s&|>]+)", command):
            if command.startswith("gateway state backup"):
                continue
            assert str(Path(path).parent) in made, f"{command!r}: {Path(path).parent} not made"


def test_manual_push_does_not_take_the_simulators_batch_id() -> None:
    """The README's manual push and the HES simulator's daily push of the same
    day must not collide (a batch id is taken once per source system: 409)."""
    from gateway.demo.simulators.hes import default_batch_id

    day = date.today() - timedelta(days=1)
    ids = [i.replace("'$Y'", day.isoformat())
           for block in _shell_blocks() if "/push/hes/batches" in block
           for i in re.findall(r'"batch_id": "([^"]+)"', block)]
    assert ids
    taken = {default_batch_id(day), default_batch_id(day, columnar=True)}
    assert not taken & set(ids)


def test_national_register_number_of_the_tour_is_an_ores_employee() -> None:
    ds = generate(load_tenants(REPO / "tenants"), datetime.now(UTC))
    employer = {p["nrn"]: p["employer"] for p in ds.persons}
    nrns = set(re.findall(r"/itsm/persons/(\d{11})", README))
    assert nrns and all(employer.get(n) == "ores" for n in nrns)
    assert "<nrn>" not in README


def test_every_demo_port_is_in_the_quickstart_and_the_outside_contract() -> None:
    from gateway.demo import StackPorts

    ports = StackPorts.demo()
    every = {ports.data, ports.ops, ports.admin, ports.receivers, *ports.simulators.values()}
    quickstart = README.split("## Quickstart", 1)[1].split("## Tour", 1)[0]
    contract = README.split("## Outside contract", 1)[1]
    for port in every:
        assert str(port) in quickstart, port
        assert str(port) in contract, port
