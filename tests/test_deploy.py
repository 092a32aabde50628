"""deploy/ passes `bash deploy/check.sh`, one part per test (it installs the
tools it needs), and its policy checks fail when a guard is taken out of the
Kubernetes manifests, the systemd unit or the Containerfile."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.config import GatewayConfig

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
KUSTOMIZE = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"

Docs = list[dict[str, Any]]


def check_sh(*parts: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "deploy/check.sh", *parts], cwd=REPO,
                          env={**os.environ, "PYTHON": sys.executable, **env},
                          capture_output=True, text=True, timeout=600, check=False)


def explain(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


# -- each part of check.sh passes, and runs the steps it claims ----------------
STEPS = {
    "prometheus": ["promtool check config", "promtool test rules", "metric names"],
    "kubernetes": ["policy (check_manifests.py", "0 failed",
                   "kubernetes-validate --strict, Kubernetes 1.30.0",
                   "kubernetes-validate --strict, Kubernetes 1.37.0", "objects valid"],
    "systemd": ["gateway@.service policy: 0 failed",
                "systemd-analyze verify gateway@data.service",
                "systemd-analyze verify gateway@control.service", "clean",
                "Overall exposure level for gateway@control.service"],
    "container": ["hadolint", "no findings", "Containerfile policy: 0 failed"],
}


@pytest.mark.timeout(900)
@pytest.mark.parametrize("part", sorted(STEPS))
def test_check_part_passes(part: str) -> None:
    proc = check_sh(part)
    assert proc.returncode == 0, explain(proc)
    for step in STEPS[part]:
        assert step in proc.stdout, f"step {step!r} did not run\n{explain(proc)}"
    assert f"deploy checks passed: {part}" in proc.stdout


def test_check_refuses_an_unknown_part() -> None:
    proc = check_sh("helm")
    assert proc.returncode == 2
    assert "usage:" in proc.stderr


# -- the external validators are wired in: each catches what no policy checks --
@pytest.mark.timeout(300)
def test_kubernetes_schema_errors_fail_the_check(tmp_path: Path) -> None:
    k = copy_manifests(tmp_path)

    def typo(docs: Docs) -> None:
        pod = docs[0]["spec"]["template"]["spec"]
        pod["containers"][0]["readinessProbes"] = pod["containers"][0]["readinessProbe"]

    edit(k / "deployment-data.yaml", typo)
    assert policy(k).returncode == 0  # the policy does not look at unknown fields
    proc = check_sh("kubernetes", KUBERNETES_DIR=str(k))
    assert proc.returncode != 0, explain(proc)
    assert "readinessProbes" in proc.stdout + proc.stderr


@pytest.mark.timeout(300)
def test_systemd_analyze_verify_findings_fail_the_check(tmp_path: Path) -> None:
    d = tmp_path / "systemd"
    shutil.copytree(SYSTEMD, d)
    unit = d / "gateway@.service"
    unit.write_text(unit.read_text().replace("TasksMax=4096", "TasksMax=plenty"))
    proc = check_sh("systemd", SYSTEMD_DIR=str(d))
    assert proc.returncode != 0, explain(proc)
    assert "Invalid maximum tasks value" in proc.stderr


@pytest.mark.timeout(300)
def test_hadolint_findings_fail_the_check(tmp_path: Path) -> None:
    f = tmp_path / "Containerfile"
    f.write_text((DEPLOY / "Containerfile").read_text().replace(
        "COPY --from=build", "RUN apt-get update && apt-get install -y curl\n"
                             "COPY --from=build"))
    proc = check_sh("container", CONTAINERFILE=str(f))
    assert proc.returncode != 0, explain(proc)
    assert "DL3008" in proc.stdout + proc.stderr  # unpinned apt package


# -- the Kubernetes policy (check_manifests.py) --------------------------------
def copy_manifests(tmp_path: Path) -> Path:
    target = tmp_path / "kubernetes"
    shutil.copytree(KUSTOMIZE, target)
    return target


def edit(path: Path, change: Callable[[Docs], None]) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    change(docs)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def policy(directory: Path, renderer: str = "auto") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(DEPLOY / "check_manifests.py"), str(directory),
                           "--renderer", renderer],
                          capture_output=True, text=True, timeout=120, check=False)


RENDERERS = ["files", pytest.param("kubectl", marks=pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl is not installed"))]


@pytest.mark.parametrize("renderer", RENDERERS)
def test_manifests_meet_the_policy(renderer: str) -> None:
    proc = policy(KUSTOMIZE, renderer)
    assert proc.returncode == 0, explain(proc)
    assert " 0 failed" in proc.stdout


def gateway(docs: Docs) -> dict[str, Any]:
    return docs[0]["spec"]["template"]["spec"]["containers"][0]


def pod(docs: Docs) -> dict[str, Any]:
    return docs[0]["spec"]["template"]["spec"]


def by_name(name: str) -> Callable[[Docs], dict[str, Any]]:
    def find(docs: Docs) -> dict[str, Any]:
        return next(d for d in docs if d["metadata"]["name"] == name)
    return find


def drop_from_kustomization(k: Path, resource: str) -> None:
    kust = yaml.safe_load((k / "kustomization.yaml").read_text())
    kust["resources"].remove(resource)
    (k / "kustomization.yaml").write_text(yaml.safe_dump(kust, sort_keys=False))


def add_secret(k: Path) -> None:
    (k / "secret.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "gateway-vault", "namespace": "shared-grid-gateway"},
        "data": {"master-key": "djE6QUFBQQ=="}}))
    kust = yaml.safe_load((k / "kustomization.yaml").read_text())
    kust["resources"].append("secret.yaml")
    (k / "kustomization.yaml").write_text(yaml.safe_dump(kust, sort_keys=False))


def on(file: str, change: Callable[[Docs], None]) -> Callable[[Path], None]:
    return lambda k: edit(k / file, change)


def set_env_literal(docs: Docs) -> None:
    for env in gateway(docs)["env"]:
        if env["name"] == "PGPASSWORD":
            env.pop("valueFrom")
            env["value"] = "hunter2"


def replace_in(file: str, old: str, new: str) -> Callable[[Path], None]:
    def change(k: Path) -> None:
        text = (k / file).read_text()
        assert old in text
        (k / file).write_text(text.replace(old, new))
    return change


def open_ops_port(docs: Docs) -> None:
    rule = by_name("gateway-data")(docs)["spec"]["ingress"][1]
    rule["from"] = [{"ipBlock": {"cidr": "10.0.0.0/8"}}]


BREAKS: dict[str, tuple[Callable[[Path], None], str]] = {
    "data readinessProbe removed": (
        on("deployment-data.yaml", lambda d: gateway(d).pop("readinessProbe")),
        "readinessProbe must GET /readyz"),
    "data livenessProbe on the data port": (
        on("deployment-data.yaml",
           lambda d: gateway(d)["livenessProbe"]["httpGet"].update(port="data")),
        "livenessProbe must GET /healthz"),
    "data plane with one replica": (
        on("deployment-data.yaml", lambda d: d[0]["spec"].update(replicas=1)),
        "at least 2 replicas"),
    "control plane with three replicas": (
        on("deployment-control.yaml", lambda d: d[0]["spec"].update(replicas=3)),
        "runs 2 replicas"),
    "runAsNonRoot dropped": (
        on("deployment-data.yaml", lambda d: pod(d)["securityContext"].pop("runAsNonRoot")),
        "runAsNonRoot: true"),
    "writable root file system": (
        on("deployment-control.yaml",
           lambda d: gateway(d)["securityContext"].update(readOnlyRootFilesystem=False)),
        "readOnlyRootFilesystem: true"),
    "init container may escalate": (
        on("deployment-data.yaml", lambda d: pod(d)["initContainers"][0]["securityContext"]
           .update(allowPrivilegeEscalation=True)),
        "allowPrivilegeEscalation: false"),
    "capabilities kept": (
        on("deployment-data.yaml",
           lambda d: gateway(d)["securityContext"]["capabilities"].update(drop=["NET_RAW"])),
        "drop ALL"),
    "service-account token mounted": (
        on("deployment-data.yaml", lambda d: pod(d).update(automountServiceAccountToken=True)),
        "automountServiceAccountToken"),
    "no resources": (
        on("deployment-data.yaml", lambda d: gateway(d).pop("resources")),
        "resources: requests cpu and memory"),
    "image latest": (
        replace_in("kustomization.yaml", 'newTag: "0.1.0"', "newTag: latest"),
        "needs a version tag"),
    "grace period shorter than the drain": (
        on("deployment-data.yaml", lambda d: pod(d).update(terminationGracePeriodSeconds=30)),
        "terminationGracePeriodSeconds 30 must exceed"),
    "a drain configured longer than the grace period": (
        replace_in("config/data.toml", "drain_timeout_s = 30", "drain_timeout_s = 60"),
        "terminationGracePeriodSeconds 60 must exceed preStop + [gateway] drain_timeout_s"),
    "replicas may share a node": (
        on("deployment-data.yaml", lambda d: (pod(d).pop("topologySpreadConstraints"),
                                              pod(d).pop("affinity"))),
        "must land on different nodes"),
    "data rollout may drop a replica": (
        on("deployment-data.yaml",
           lambda d: d[0]["spec"]["strategy"]["rollingUpdate"].update(maxUnavailable=1)),
        "maxUnavailable: 0"),
    "a Secret with data in the manifests": (add_secret, "Secrets are referenced"),
    "a password as a literal env var": (
        on("deployment-data.yaml", set_env_literal), "env PGPASSWORD is a literal"),
    "a password in the state url": (
        replace_in("config/data.toml", "postgresql://postgres.",
                   "postgresql://gateway:hunter2@postgres."),
        "password"),
    "the data replicas configured as control": (
        replace_in("config/data.toml", 'role = "data"', 'role = "control"'),
        "[fleet] role = 'data'"),
    "memory budget above the container limit": (
        replace_in("config/data.toml", "memory_budget_mb = 1536", "memory_budget_mb = 4096"),
        "memory_budget_mb (4096)"),
    "no PodDisruptionBudgets": (
        lambda k: drop_from_kustomization(k, "poddisruptionbudgets.yaml"),
        "needs one PodDisruptionBudget"),
    "control PDB blocks every drain": (
        on("poddisruptionbudgets.yaml",
           lambda d: by_name("gateway-control")(d)["spec"].update(minAvailable=2)),
        "let at least one go"),
    "no NetworkPolicies": (
        lambda k: drop_from_kustomization(k, "networkpolicies.yaml"),
        "must cover Ingress and Egress"),
    "egress to anywhere": (
        on("networkpolicies.yaml",
           lambda d: by_name("gateway-data")(d)["spec"]["egress"].append({})),
        "must name its destinations and ports"),
    "ops port open to an address block": (
        on("networkpolicies.yaml", open_ops_port), "open to selected pods only"),
    "admin port admitted on the data plane": (
        on("networkpolicies.yaml", lambda d: by_name("gateway-data")(d)["spec"]["ingress"][0]
           ["ports"].append({"protocol": "TCP", "port": 8444})),
        "ingress must admit exactly ports [8443, 9102]"),
    "no Service for the admin plane": (
        on("services.yaml", lambda d: d.remove(by_name("gateway-admin")(d))),
        "no Service exposes the control plane's port 8444"),
}


@pytest.mark.parametrize("renderer", RENDERERS)
@pytest.mark.parametrize("name", sorted(BREAKS))
def test_manifest_policy_catches(name: str, renderer: str, tmp_path: Path) -> None:
    k = copy_manifests(tmp_path)
    breaker, expected = BREAKS[name]
    breaker(k)
    proc = policy(k, renderer)
    assert proc.returncode == 1, explain(proc)
    assert expected in proc.stdout, explain(proc)


def test_every_manifest_is_in_the_kustomization() -> None:
    kust = yaml.safe_load((KUSTOMIZE / "kustomization.yaml").read_text())
    listed = set(kust["resources"])
    listed |= {f.split("=", 1)[-1] for g in kust["configMapGenerator"] for f in g["files"]}
    present = {str(p.relative_to(KUSTOMIZE)) for p in KUSTOMIZE.rglob("*")
               if p.is_file() and p.name != "kustomization.yaml"}
    assert present == listed


# -- the systemd policy (check_units.py) ---------------------------------------
def units(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(DEPLOY / "check_units.py"), str(directory)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_unit_meets_the_policy() -> None:
    proc = units(SYSTEMD)
    assert proc.returncode == 0, explain(proc)


UNIT_BREAKS = {
    "ProtectSystem=strict": ("ProtectSystem=strict\n", "ProtectSystem=full\n"),
    "ProtectHome=yes": ("ProtectHome=yes\n", ""),
    "PrivateTmp=yes": ("PrivateTmp=yes\n", ""),
    "NoNewPrivileges=yes": ("NoNewPrivileges=yes\n", "NoNewPrivileges=no\n"),
    "CapabilityBoundingSet=": ("CapabilityBoundingSet=\n", "CapabilityBoundingSet=CAP_NET_RAW\n"),
    "RestrictAddressFamilies": ("AF_INET AF_INET6 AF_UNIX", "AF_INET AF_INET6 AF_UNIX AF_NETLINK"),
    "SystemCallFilter=@system-service": ("SystemCallFilter=@system-service\n", ""),
    "StateDirectory=": ("StateDirectory=gateway/%i\n", ""),
    "LoadCredential=vault.key": ("LoadCredential=vault.key:", "LoadCredential=vault-key:"),
    "KillSignal=SIGTERM": ("KillSignal=SIGTERM", "KillSignal=SIGKILL"),
    "must be shorter than the unit's TimeoutStopSec": ("TimeoutStopSec=45s",
                                                       "TimeoutStopSec=20s"),
    "Restart=on-failure": ("Restart=on-failure", "Restart=no"),
    "unprivileged user": ("DynamicUser=yes\n", "User=root\n"),
    "UMask=0077": ("UMask=0077\n", ""),
    "below the unit's MemoryMax": ("MemoryMax=2560M", "MemoryMax=1G"),
}


@pytest.mark.parametrize("guard", sorted(UNIT_BREAKS))
def test_unit_policy_catches(guard: str, tmp_path: Path) -> None:
    d = tmp_path / "systemd"
    shutil.copytree(SYSTEMD, d)
    unit = d / "gateway@.service"
    old, new = UNIT_BREAKS[guard]
    assert old in unit.read_text()
    unit.write_text(unit.read_text().replace(old, new))
    proc = units(d)
    assert proc.returncode == 1, explain(proc)
    assert guard in proc.stdout, explain(proc)


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("/run/credentials/gateway@data.service/vault.key", "/etc/gateway/vault.key",
     "[vault] key_file must be the unit's credential"),
    ('cert = "/var/lib/gateway/data/tls/tls.crt"', 'cert = "/etc/gateway/tls/tls.crt"',
     "[tls] cert must be in the state directory"),
    ('role = "data"', 'role = "all"', "[fleet] role = 'data'"),
    # The drain the replica will use comes from its configuration: a longer
    # one than systemd waits for is refused.
    ("drain_timeout_s = 30", "drain_timeout_s = 50",
     "[gateway] drain_timeout_s (50 s) must be shorter than the unit's TimeoutStopSec"),
])
def test_unit_policy_checks_the_example_configs(old: str, new: str, expected: str,
                                                 tmp_path: Path) -> None:
    d = tmp_path / "systemd"
    shutil.copytree(SYSTEMD, d)
    cfg = d / "data.toml"
    assert old in cfg.read_text()
    cfg.write_text(cfg.read_text().replace(old, new))
    proc = units(d)
    assert proc.returncode == 1, explain(proc)
    assert expected in proc.stdout, explain(proc)


# -- the Containerfile policy (check_containerfile.py) -------------------------
def containerfile(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(DEPLOY / "check_containerfile.py"), str(path)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_containerfile_meets_the_policy() -> None:
    proc = containerfile(DEPLOY / "Containerfile")
    assert proc.returncode == 0, explain(proc)


CONTAINER_BREAKS = {
    "root user": ("USER 10001:10001", "USER root", "numeric non-root uid"),
    "no user": ("USER 10001:10001\n", "", "numeric non-root uid"),
    "unpinned runtime base": ("FROM python:3.11.11-slim-bookworm\n", "FROM python:3.11-slim\n",
                              "pin the base image"),
    "latest build base": ("FROM python:3.11.11-slim-bookworm AS build",
                          "FROM python:latest AS build", "pin the base image"),
    "single stage": ("COPY --from=build /opt/gateway /opt/gateway\n", "", None),
    "whole context copied": ("COPY gateway/ gateway/", "COPY . .", "whole build context"),
    "a key copied in": ("COPY gateway/ gateway/", "COPY gateway/ gateway/\n"
                        "COPY certs/dev/server/gateway.key /etc/gateway/", "key material"),
    "a secret in ENV": ("PYTHONUNBUFFERED=1", "PYTHONUNBUFFERED=1 GATEWAY_VAULT_KEY=v1:AAAA",
                        "no secret in the image"),
    "admin port not exposed": ("EXPOSE 8443 8444 9102", "EXPOSE 8443 9102", "EXPOSE"),
    "shell-form entrypoint": ('ENTRYPOINT ["gateway"]', "ENTRYPOINT gateway", "ENTRYPOINT"),
}


@pytest.mark.parametrize("name", sorted(CONTAINER_BREAKS))
def test_containerfile_policy_catches(name: str, tmp_path: Path) -> None:
    old, new, expected = CONTAINER_BREAKS[name]
    text = (DEPLOY / "Containerfile").read_text()
    assert old in text
    if expected is None:  # single stage: drop the build stage altogether
        start = text.index("FROM python:3.11.11-slim-bookworm AS build")
        end = text.index("FROM python:3.11.11-slim-bookworm\n")
        text = text[:start] + text[end:]
        expected = "multi-stage"
    f = tmp_path / "Containerfile"
    f.write_text(text.replace(old, new))
    proc = containerfile(f)
    assert proc.returncode == 1, explain(proc)
    assert expected in proc.stdout, explain(proc)


# -- the configurations load with the gateway's own parser ---------------------
def configmap_tomls() -> dict[str, str]:
    kust = yaml.safe_load((KUSTOMIZE / "kustomization.yaml").read_text())
    out = {}
    for gen in kust["configMapGenerator"]:
        for entry in gen["files"]:
            out[gen["options"]["labels"]["app.kubernetes.io/component"]] = (
                KUSTOMIZE / entry.split("=", 1)[1]).read_text()
    return out


CONFIGS = [("kubernetes", role) for role in ("control", "data")] + [
    ("systemd", role) for role in ("control", "data")]


@pytest.mark.parametrize(("where", "role"), CONFIGS)
def test_example_configs_load(where: str, role: str, tmp_path: Path) -> None:
    text = (configmap_tomls()[role] if where == "kubernetes"
            else (SYSTEMD / f"{role}.toml").read_text())
    config = GatewayConfig.from_mapping(tomllib.loads(text), base=tmp_path, source=where)
    assert config.fleet.role == role
    assert config.shared_state
    assert config.state_max_staleness_s == 5
    plane = config.admin if role == "control" else config.data
    assert plane.port == (8444 if role == "control" else 8443)
    assert config.ops.port == 9102
    assert config.state_url is not None
    assert urlsplit(config.state_url).password is None


def test_no_private_key_under_deploy() -> None:
    for path in DEPLOY.rglob("*"):
        if ".venv" in path.parts or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        assert not re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", text), path


def test_operations_guide_is_linked_and_names_the_fleet_metrics() -> None:
    guide = (REPO / "docs" / "operations.md").read_text()
    assert "operations.md" in (REPO / "README.md").read_text()
    assert "operations.md" in (DEPLOY / "README.md").read_text()
    for metric in ("gateway_state_staleness_seconds", "gateway_replicas_live",
                   "gateway_outbox_claims_total", "gateway_control_plane_leader"):
        assert metric in guide
