"""Simulated shared systems (DESIGN.md §8): the smart-meter HES, the clearing
system's access register, the Connect My Home portal and the IT provider's
service platform.

Each one holds several tenants' data on purpose, refuses any request without
a valid gateway assertion for its own audience, and has a fault switch
(misroute, slow, error, reset) so tests can prove the gateway catches what an
upstream gets wrong. They are deliberately dumb about authorisation beyond
what the real systems do: guarding tenants is the gateway's job.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from gateway.demo._dataset import Dataset
from gateway.demo.simulators import clearing, cmh, hes, itsm
from gateway.demo.simulators._common import CONTROL_HEADER, new_app
from gateway.demo.simulators._secrets import ACCOUNTS, SimSecrets, install
from gateway.pki import KeySource

SIMULATOR_NAMES: tuple[str, ...] = ("hes", "clearing", "cmh", "itsm")

_SETUP: dict[str, Callable[[web.Application, Dataset], None]] = {
    "hes": hes.setup,
    "clearing": clearing.setup,
    "cmh": cmh.setup,
    "itsm": itsm.setup,
}

__all__ = ["ACCOUNTS", "CONTROL_HEADER", "SIMULATOR_NAMES", "SimSecrets", "build_simulator"]


def build_simulator(name: str, dataset: Dataset, keys: KeySource,
                    control_token: str, secrets: SimSecrets | None = None) -> web.Application:
    """The aiohttp app of simulator ``name``; ``name`` is also the assertion
    audience it requires. It works on its own copy of ``dataset``. With
    ``secrets`` it also requires the gateway's service credential and has
    privileged accounts."""
    setup = _SETUP.get(name)
    if setup is None:
        raise ValueError(f"unknown simulator {name!r} (known: {', '.join(SIMULATOR_NAMES)})")
    app = new_app(name, keys, control_token)
    if secrets is not None:
        install(app, secrets)
    setup(app, dataset)
    return app
