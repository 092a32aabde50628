"""What ``gateway demo`` prints once it runs: every port it listens on, where
its files are, and commands that work as pasted, with the paths of this run
(``--certs``, ``--work``) and its ports (``--ephemeral-ports``)."""

from __future__ import annotations

import shlex

from gateway.demo._devpki import DevPki
from gateway.demo._stack import Stack

# How the banner names each simulator, in the order it lists them.
SIMULATOR_TITLES = {"hes": "HES simulator", "clearing": "clearing simulator",
                    "cmh": "CMH simulator", "itsm": "ITSM simulator"}


def partner_lines(stack: Stack) -> list[str]:
    """The simulated shared systems and the tenants' push receivers, one
    listener a line."""
    lines = [f"  {SIMULATOR_TITLES[name]:<20} https://localhost:{port}"
             for name, port in stack.sim_ports.items()]
    lines.append(f"  {'push receivers':<20} https://localhost:{stack.receivers_port}"
                 "/receivers/<tenant>/readings  (the tenants' endpoints for pushed data)")
    return lines


def curl_tls(pki: DevPki, tenant: str, name: str) -> tuple[str, str]:
    """curl's ``--cacert`` and ``--cert/--key`` options, quoted for a shell."""
    q = shlex.quote
    return (f"--cacert {q(str(pki.ca_cert))}",
            f"--cert {q(str(pki.client_cert(tenant, name)))} "
            f"--key {q(str(pki.client_key(tenant, name)))}")


def admin_environment(pki: DevPki, admin_url: str) -> str:
    """The admin CLI's settings for this demo, as the security admin alice."""
    q = shlex.quote
    return (f"export GATEWAY_ADMIN_URL={admin_url} "
            f"GATEWAY_ADMIN_CACERT={q(str(pki.ca_cert))} \\\n"
            f"         GATEWAY_ADMIN_CERT={q(str(pki.client_cert('ores', 'alice')))} "
            f"GATEWAY_ADMIN_KEY={q(str(pki.client_key('ores', 'alice')))}")


def demo_banner(stack: Stack) -> str:
    pki = stack.pki
    ds = stack.dataset
    gw = stack.gateway
    own = next(m["serial"] for m in ds.meters if m["owners"][-1]["tenant"] == "ores"
               and not m["airplane_mode"])
    foreign = next(m["serial"] for m in ds.meters if m["owners"][-1]["tenant"] == "fluvius")
    nrn = next(p["nrn"] for p in ds.persons if p["employer"] == "ores")
    cacert, cert = curl_tls(pki, "ores", "api")
    base = f"https://localhost:{gw.data_port}"
    partners = "\n".join(partner_lines(stack))
    alice = pki.client_cert("ores", "alice")
    return f"""
Shared-grid gateway demo is running (Ctrl-C to stop). It listens on:

  data plane (mTLS)    {base}
  admin plane (mTLS)   https://localhost:{gw.admin_port}  (security team: {alice})
  ops plane            http://127.0.0.1:{gw.ops_port}  (/metrics /healthz /readyz /crl.pem)
{partners}

  trust bundle         {pki.ca_cert}
  client certificates  {pki.root}/<tenant>/<name>.pem and .key
  config (for serve)   {stack.work_dir / 'gateway.toml'}
  audit log            {stack.work_dir / 'audit.jsonl'}

Try (as ORES):
  # allowed: ORES's own meter
  curl {cacert} {cert} {base}/hes/meters/{own}
  # denied (403): a Fluvius meter
  curl {cacert} {cert} {base}/hes/meters/{foreign}
  # list: only ORES's meters
  curl {cacert} {cert} {base}/hes/meters
  # an ORES employee's national register number (fictional) to look up: {nrn}
  # (purpose-bound: a person asks, the team's manager approves first; README,
  #  "purpose-bound consultations": erik asks, hanna approves)
  # metrics
  curl -s http://127.0.0.1:{gw.ops_port}/metrics | grep ^gateway_
  # the isolation canaries, probed every {stack.canary_interval_s or 0:g} s (README:
  # Isolation canaries); the HES misroute fault below turns their owners' probes "withheld"
  curl -s http://127.0.0.1:{gw.ops_port}/metrics | grep ^gateway_canary_

The security team's commands (gateway certs|keys|principals|vault|breakglass ...) as alice:
  {admin_environment(pki, f'https://localhost:{gw.admin_port}')}

Simulator control (faults, the HES's daily push): header X-Sim-Control: {stack.control_token}
  curl -X POST -H 'X-Sim-Control: {stack.control_token}' -d '{{"mode": "misroute"}}' \\
       {cacert} https://localhost:{stack.sim_ports["hes"]}/_sim/fault
"""
