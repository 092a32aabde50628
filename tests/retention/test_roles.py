"""D6, D8: deleting under the retention policy is a control duty. A
data-plane replica's database role (gateway.state.data_plane_grants) can
neither delete consultation-register entries nor a principal's state."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg import errors

from gateway.state import (
    AuditTables,
    Consultation,
    Heartbeats,
    PostgresStore,
    PrincipalState,
    RelationPublication,
    data_plane_grants,
)
from tests.postgres import Cluster

T0 = datetime(2024, 1, 2, tzinfo=UTC)


def test_a_data_replica_cannot_delete_what_retention_deletes(postgres: Cluster) -> None:
    owner_url = postgres.new_database()
    owner = PostgresStore(owner_url)
    owner.add_consultation(Consultation("inc-1", T0, "ores", "ores/person/carol",
                                        "/itsm/persons/{nrn}", "x", "hr-administration", "r"))
    owner.set_principal_state(PrincipalState(("engie-it", "person", "marc"), True, T0,
                                             "left", "ores/person/alice"))
    for made in (Heartbeats(owner_url), AuditTables(owner_url),
                 RelationPublication(owner_url)):
        made.close()  # the control plane's first start made every table
    role = "gw_data_" + uuid.uuid4().hex[:8]
    with psycopg.connect(owner_url, autocommit=True) as db:
        db.execute(f"CREATE ROLE {role} LOGIN")  # a generated identifier
        db.execute(data_plane_grants(role).encode())
    database = owner_url.split("@/", 1)[1].split("?")[0]
    replica = PostgresStore(f"postgresql://{role}@/{database}?host={postgres.socket_dir}")
    try:
        with pytest.raises(errors.InsufficientPrivilege):
            replica.delete_consultations(before=datetime.now(UTC))
        (state,) = replica.principal_states()
        with pytest.raises(errors.InsufficientPrivilege):
            replica.delete_principal_state(state)
        assert owner.delete_consultations(before=datetime.now(UTC)) == 1  # the control plane
        assert owner.delete_principal_state(state) is True
    finally:
        replica.close()
        owner.close()
