"""Policy check of the Kubernetes manifests in deploy/kubernetes.

Schema validation (kubernetes-validate) says the objects are well-formed;
this says they are the fleet docs/operations.md describes: highly available,
least privilege, no secret inside. It renders the kustomization
(`kubectl kustomize` when kubectl is on PATH, else the files listed in
kustomization.yaml plus its ConfigMap generators), then asserts, per role:

- two control-plane replicas, at least two data-plane replicas, a hard
  spread over nodes (topology spread or anti-affinity on the host name);
- the gateway.toml each Deployment mounts names that role, a PostgreSQL
  state url without credentials, the listener ports, a memory budget below
  the container's memory limit;
- readiness on /readyz and liveness on /healthz of the ops port; a grace
  period longer than preStop + the drain timeout that role's gateway.toml
  configures ([gateway] drain_timeout_s, 20 s when absent); a rolling update of the
  data plane that never goes below its replica count;
- non-root, no privilege escalation, read-only root file system, every
  capability dropped, seccomp, no service-account token, resources set,
  an image tag that is not `latest`;
- no Secret object, no secret-looking literal in an env var, no private key
  or password in a ConfigMap;
- a Service per plane, a PodDisruptionBudget per Deployment that lets one
  replica go and keeps the rest, NetworkPolicies that cover ingress and
  egress of every pod, admit only the planes' ports (the ops port from
  selected pods only, never an address block) and allow egress only on
  named ports (DNS and PostgreSQL among them).

Usage: check_manifests.py [DIR] [--renderer auto|kubectl|files] [--dump FILE]
Exit status 0 when every check holds, 1 otherwise (each failure printed),
2 on a usage or rendering error. Needs PyYAML.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

# The gateway's drain: how long a replica lets in-flight requests finish after
# SIGTERM. Read from each role's gateway.toml ([gateway] drain_timeout_s); this
# is the gateway's default when the key is absent.
DEFAULT_DRAIN_TIMEOUT_S = 20
NAMESPACE = "shared-grid-gateway"
OPS_PORT = 9102
PLANE_PORT = {"data": 8443, "control": 8444}
LISTENER = {"data": "data", "control": "admin"}
ROLES = ("control", "data")
HOSTNAME_KEY = "kubernetes.io/hostname"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass",
                  "StorageClass", "PersistentVolume", "CustomResourceDefinition"}
SECRETISH_ENV = re.compile(r"PASSWORD|SECRET|TOKEN|(^|_)KEY($|_)|PRIVATE", re.IGNORECASE)
URL_WITH_PASSWORD = re.compile(r"postgres(?:ql)?://[^/@\s\"']*:[^/@\s\"']*@")
OPEN_CIDRS = {"0.0.0.0/0", "::/0"}

Doc = dict[str, Any]


class Report:
    def __init__(self) -> None:
        self.checks = 0
        self.failures: list[str] = []

    def check(self, ok: bool, what: str) -> bool:
        self.checks += 1
        if not ok:
            self.failures.append(what)
        return ok


# -- rendering -----------------------------------------------------------------
def render(directory: Path, renderer: str) -> list[Doc]:
    if renderer == "auto":
        renderer = "kubectl" if shutil.which("kubectl") else "files"
    if renderer == "kubectl":
        kubectl = shutil.which("kubectl") or "kubectl"
        # A fixed program and our own directory: no untrusted input.
        proc = subprocess.run([kubectl, "kustomize", str(directory)],  # noqa: S603
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"kubectl kustomize {directory} failed:\n{proc.stderr}")
        return [d for d in yaml.safe_load_all(proc.stdout) if d]
    return render_files(directory)


def render_files(directory: Path) -> list[Doc]:
    """Without kubectl: the resources kustomization.yaml lists, its
    ConfigMap generators (no hash suffix), its namespace and image tags."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    namespace = kust.get("namespace")
    docs: list[Doc] = []
    for resource in kust.get("resources", []):
        path = directory / resource
        if not path.is_file():
            raise SystemExit(f"{path}: listed in kustomization.yaml but not a file")
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for gen in kust.get("configMapGenerator", []):
        data: dict[str, str] = {}
        for entry in gen.get("files", []):
            key, _, rel = entry.partition("=") if "=" in entry else (Path(entry).name, "", entry)
            data[key] = (directory / rel).read_text()
        meta: Doc = {"name": gen["name"]}
        labels = (gen.get("options") or {}).get("labels")
        if labels:
            meta["labels"] = dict(labels)
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data})
    for doc in docs:
        if namespace and doc.get("kind") not in CLUSTER_SCOPED:
            doc.setdefault("metadata", {})["namespace"] = namespace
    images = {i["name"]: i for i in kust.get("images", [])}
    for doc in docs:
        for c in containers(doc):
            name, _, tag = c.get("image", "").partition(":")
            if name in images:
                new = images[name]
                c["image"] = f"{new.get('newName', name)}:{new.get('newTag', tag)}"
    return docs


# -- helpers -------------------------------------------------------------------
def pod_spec(doc: Doc) -> Doc:
    return doc.get("spec", {}).get("template", {}).get("spec", {}) or {}


def containers(doc: Doc, *, init: bool = True) -> list[Doc]:
    spec = pod_spec(doc)
    found = list(spec.get("containers") or [])
    if init:
        found += list(spec.get("initContainers") or [])
    return found


def selects(selector: dict[str, str] | None, labels: dict[str, str]) -> bool:
    """A non-empty matchLabels selector that picks pods with these labels."""
    return bool(selector) and all(labels.get(k) == v for k, v in (selector or {}).items())


def name_of(doc: Doc) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def of_kind(docs: Iterable[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d.get("kind") == kind]


def memory_mib(quantity: Any) -> float | None:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(quantity))
    if not m:
        return None
    factor = {None: 1 / 2**20, "Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024**2,
              "k": 1e3 / 2**20, "M": 1e6 / 2**20, "G": 1e9 / 2**20, "T": 1e12 / 2**20}
    return float(m[1]) * factor[m[2]]


def port_number(container: Doc, port: Any) -> int | None:
    if isinstance(port, int):
        return port
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    return None


def prestop_sleep_s(container: Doc) -> int:
    pre = (container.get("lifecycle") or {}).get("preStop") or {}
    if "sleep" in pre:
        return int(pre["sleep"].get("seconds", 0))
    cmd = (pre.get("exec") or {}).get("command") or []
    if len(cmd) == 2 and Path(str(cmd[0])).name == "sleep" and str(cmd[1]).isdigit():
        return int(cmd[1])
    return 0


# -- checks --------------------------------------------------------------------
def check_no_secrets(docs: list[Doc], r: Report) -> None:
    for doc in of_kind(docs, "Secret"):
        r.check(False, f"{name_of(doc)}: Secrets are referenced, never part of the manifests")
    for doc in docs:
        for c in containers(doc):
            for env in c.get("env") or []:
                if "value" in env and SECRETISH_ENV.search(env.get("name", "")):
                    r.check(False, f"{name_of(doc)}: container {c.get('name')}: env "
                                   f"{env['name']} is a literal; take it from a Secret")
    for doc in of_kind(docs, "ConfigMap"):
        for key, value in (doc.get("data") or {}).items():
            text = str(value)
            r.check("PRIVATE KEY" not in text,
                    f"{name_of(doc)}: {key} holds a private key")
            r.check(not URL_WITH_PASSWORD.search(text) and "password=" not in text.lower(),
                    f"{name_of(doc)}: {key} holds a database password")


def check_namespace(docs: list[Doc], r: Report) -> None:
    spaces = of_kind(docs, "Namespace")
    if r.check(len(spaces) == 1 and spaces[0]["metadata"]["name"] == NAMESPACE,
               f"one Namespace {NAMESPACE} is part of the manifests"):
        labels = spaces[0]["metadata"].get("labels") or {}
        r.check(labels.get("pod-security.kubernetes.io/enforce") == "restricted",
                f"Namespace {NAMESPACE}: enforce the restricted Pod Security Standard")
    for doc in docs:
        if doc.get("kind") not in CLUSTER_SCOPED:
            r.check(doc.get("metadata", {}).get("namespace") == NAMESPACE,
                    f"{name_of(doc)}: not in namespace {NAMESPACE}")


def deployments_by_role(docs: list[Doc], r: Report) -> dict[str, Doc]:
    found: dict[str, Doc] = {}
    for doc in of_kind(docs, "Deployment"):
        role = doc["spec"]["template"]["metadata"].get("labels", {}).get(
            "app.kubernetes.io/component")
        r.check(role in ROLES and role not in found,
                f"{name_of(doc)}: pod label app.kubernetes.io/component must be one of "
                f"{ROLES}, once each (got {role!r})")
        if role in ROLES:
            found[role] = doc
    for role in ROLES:
        r.check(role in found, f"no Deployment for the {role} role")
    return found


def gateway_container(dep: Doc) -> Doc:
    for c in containers(dep, init=False):
        if c.get("name") == "gateway":
            return c
    return containers(dep, init=False)[0] if containers(dep, init=False) else {}


def check_deployment(role: str, dep: Doc, docs: list[Doc], r: Report) -> None:
    n = name_of(dep)
    spec = dep.get("spec", {})
    pod = pod_spec(dep)
    labels = spec.get("template", {}).get("metadata", {}).get("labels") or {}
    r.check(selects(spec.get("selector", {}).get("matchLabels"), labels),
            f"{n}: selector does not match its pod labels")
    replicas = spec.get("replicas", 1)
    if role == "control":
        r.check(replicas == 2, f"{n}: the control plane runs 2 replicas (got {replicas})")
    else:
        r.check(replicas >= 2, f"{n}: the data plane runs at least 2 replicas (got {replicas})")
        rolling = (spec.get("strategy") or {}).get("rollingUpdate") or {}
        r.check(spec.get("strategy", {}).get("type", "RollingUpdate") == "RollingUpdate"
                and rolling.get("maxUnavailable") == 0,
                f"{n}: a rollout must not take ready replicas away (maxUnavailable: 0)")
    r.check(pod.get("automountServiceAccountToken") is False,
            f"{n}: automountServiceAccountToken: false (the gateway calls no API)")

    # A hard spread over nodes.
    hard = any(t.get("topologyKey") == HOSTNAME_KEY
               and t.get("whenUnsatisfiable") == "DoNotSchedule"
               and selects((t.get("labelSelector") or {}).get("matchLabels"), labels)
               for t in pod.get("topologySpreadConstraints") or [])
    anti = ((pod.get("affinity") or {}).get("podAntiAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution") or []
    hard = hard or any(t.get("topologyKey") == HOSTNAME_KEY
                       and selects((t.get("labelSelector") or {}).get("matchLabels"), labels)
                       for t in anti)
    r.check(hard, f"{n}: replicas must land on different nodes (topologySpreadConstraints "
                  f"on {HOSTNAME_KEY} with DoNotSchedule, or required podAntiAffinity)")

    # Security context.
    psc = pod.get("securityContext") or {}
    for c in containers(dep):
        cn = f"{n}: container {c.get('name')}"
        sc = c.get("securityContext") or {}
        r.check(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True,
                f"{cn}: runAsNonRoot: true")
        r.check(sc.get("runAsUser", psc.get("runAsUser", 1)) != 0, f"{cn}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        r.check(seccomp in ("RuntimeDefault", "Localhost"), f"{cn}: seccompProfile RuntimeDefault")
        r.check(sc.get("allowPrivilegeEscalation") is False,
                f"{cn}: allowPrivilegeEscalation: false")
        r.check(sc.get("readOnlyRootFilesystem") is True, f"{cn}: readOnlyRootFilesystem: true")
        r.check(sc.get("privileged") is not True, f"{cn}: privileged")
        caps = sc.get("capabilities") or {}
        r.check("ALL" in (caps.get("drop") or []) and not caps.get("add"),
                f"{cn}: capabilities: drop ALL, add none")
        res = c.get("resources") or {}
        r.check(bool((res.get("requests") or {}).get("cpu"))
                and bool((res.get("requests") or {}).get("memory"))
                and bool((res.get("limits") or {}).get("memory")),
                f"{cn}: resources: requests cpu and memory, limits memory")
        image = str(c.get("image", ""))
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        r.check("@sha256:" in image or (tag != "" and tag != "latest"),
                f"{cn}: image {image!r} needs a version tag or digest")

    gw = gateway_container(dep)
    gn = f"{n}: container {gw.get('name')}"
    ports = {port_number(gw, p.get("containerPort")) for p in gw.get("ports") or []}
    r.check({PLANE_PORT[role], OPS_PORT} <= ports,
            f"{gn}: container ports {PLANE_PORT[role]} and {OPS_PORT}")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = (gw.get(probe) or {}).get("httpGet") or {}
        r.check(get.get("path") == path and port_number(gw, get.get("port")) == OPS_PORT,
                f"{gn}: {probe} must GET {path} on the ops port {OPS_PORT}")
    toml = check_config(role, dep, gw, docs, r)
    # The drain timeout the replica will use, from its own configuration.
    drain = ((toml or {}).get("gateway") or {}).get("drain_timeout_s", DEFAULT_DRAIN_TIMEOUT_S)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    needed = drain + prestop_sleep_s(gw)
    r.check(grace > needed, f"{n}: terminationGracePeriodSeconds {grace} must exceed preStop "
                            f"+ [gateway] drain_timeout_s ({needed} s)")


def check_config(role: str, dep: Doc, gw: Doc, docs: list[Doc], r: Report) -> Doc | None:
    """Check the role's gateway.toml; the parsed configuration, or None."""
    n = name_of(dep)
    args = [str(a) for a in (gw.get("command") or []) + (gw.get("args") or [])]
    if not r.check("serve" in args and "--config" in args[:-1],
                   f"{n}: the gateway runs `serve --config FILE`"):
        return None
    config_path = Path(args[args.index("--config") + 1])
    mount = next((m for m in gw.get("volumeMounts") or []
                  if config_path.parent == Path(m.get("mountPath", "/nonexistent"))), None)
    volume = next((v for v in pod_spec(dep).get("volumes") or []
                   if mount and v.get("name") == mount.get("name")), None)
    cm_name = ((volume or {}).get("configMap") or {}).get("name")
    cm = next((d for d in of_kind(docs, "ConfigMap")
               if d["metadata"]["name"] == cm_name), None)
    text = ((cm or {}).get("data") or {}).get(config_path.name)
    if not r.check(text is not None,
                   f"{n}: {config_path} must come from a ConfigMap of the manifests"):
        return None
    try:
        toml = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        r.check(False, f"{name_of(cm or {})}: {config_path.name} is not TOML: {exc}")
        return None
    where = f"{name_of(cm or {})}: {config_path.name}"
    r.check((toml.get("fleet") or {}).get("role") == role, f"{where}: [fleet] role = {role!r}")
    url = str((toml.get("state") or {}).get("url", ""))
    r.check(url.startswith(("postgresql://", "postgres://")),
            f"{where}: [state] url must be postgresql:// (shared state of the fleet)")
    r.check(not URL_WITH_PASSWORD.search(url), f"{where}: [state] url holds a password")
    listeners = toml.get("listeners") or {}
    r.check((listeners.get(LISTENER[role]) or {}).get("port") == PLANE_PORT[role],
            f"{where}: listeners.{LISTENER[role]}.port = {PLANE_PORT[role]}")
    r.check((listeners.get("ops") or {}).get("port") == OPS_PORT,
            f"{where}: listeners.ops.port = {OPS_PORT}")
    budget = (toml.get("limits") or {}).get("memory_budget_mb")
    limit = memory_mib(((gw.get("resources") or {}).get("limits") or {}).get("memory"))
    r.check(budget is not None and limit is not None and budget < limit,
            f"{where}: [limits] memory_budget_mb ({budget}) must be set below the "
            f"container's memory limit ({limit} MiB, read as MiB to be safe), or the "
            "kernel kills before the gateway sheds load")
    return toml


def check_services(roles: dict[str, Doc], docs: list[Doc], r: Report) -> None:
    services = of_kind(docs, "Service")

    def exposes(port: int, pods: list[Doc]) -> bool:
        for svc in services:
            sel = svc.get("spec", {}).get("selector")
            if not all(selects(sel, d["spec"]["template"]["metadata"]["labels"]) for d in pods):
                continue
            for p in svc["spec"].get("ports") or []:
                target = p.get("targetPort", p.get("port"))
                if p.get("port") == port and all(
                        port_number(gateway_container(d), target) == port for d in pods):
                    return True
        return False

    for role, dep in roles.items():
        r.check(exposes(PLANE_PORT[role], [dep]),
                f"no Service exposes the {role} plane's port {PLANE_PORT[role]}")
    if roles:
        r.check(exposes(OPS_PORT, list(roles.values())),
                f"no Service exposes the ops port {OPS_PORT} of every replica")


def check_pdbs(roles: dict[str, Doc], docs: list[Doc], r: Report) -> None:
    for dep in roles.values():
        labels = dep["spec"]["template"]["metadata"]["labels"]
        replicas = dep["spec"].get("replicas", 1)
        pdbs = [p for p in of_kind(docs, "PodDisruptionBudget")
                if selects(p["spec"].get("selector", {}).get("matchLabels"), labels)]
        if not r.check(len(pdbs) == 1, f"{name_of(dep)}: needs one PodDisruptionBudget "
                                       f"(found {len(pdbs)})"):
            continue
        spec = pdbs[0]["spec"]
        if "minAvailable" in spec:
            m = spec["minAvailable"]
            ok = isinstance(m, int) and 1 <= m <= replicas - 1
        else:
            m = spec.get("maxUnavailable")
            ok = isinstance(m, int) and 1 <= m <= replicas - 1
        r.check(ok, f"{name_of(pdbs[0])}: must keep at least one replica and let at least one "
                    f"go (integer minAvailable or maxUnavailable in 1..{replicas - 1})")


def check_network(roles: dict[str, Doc], docs: list[Doc], r: Report) -> None:
    policies = of_kind(docs, "NetworkPolicy")
    for role, dep in roles.items():
        labels = dep["spec"]["template"]["metadata"]["labels"]
        mine = [p for p in policies
                if not (p["spec"].get("podSelector") or {}).get("matchLabels")
                or selects(p["spec"]["podSelector"]["matchLabels"], labels)]
        types = {t for p in mine for t in p["spec"].get("policyTypes") or []}
        n = name_of(dep)
        r.check({"Ingress", "Egress"} <= types,
                f"{n}: NetworkPolicies must cover Ingress and Egress of its pods")
        ingress_ports: set[int] = set()
        egress_ports: set[int] = set()
        for p in mine:
            for rule in p["spec"].get("ingress") or []:
                peers, ports = rule.get("from") or [], rule.get("ports") or []
                r.check(bool(peers) and bool(ports),
                        f"{name_of(p)}: an ingress rule must name its sources and ports")
                numbers = {pt.get("port") for pt in ports}
                ingress_ports |= numbers
                for peer in peers:
                    cidr = (peer.get("ipBlock") or {}).get("cidr")
                    r.check(cidr not in OPEN_CIDRS, f"{name_of(p)}: ingress from {cidr}")
                    if OPS_PORT in numbers:
                        r.check(cidr is None, f"{name_of(p)}: the ops port (plain HTTP) is "
                                              "open to selected pods only, not to an ipBlock")
            for rule in p["spec"].get("egress") or []:
                peers, ports = rule.get("to") or [], rule.get("ports") or []
                r.check(bool(peers) and bool(ports),
                        f"{name_of(p)}: an egress rule must name its destinations and ports")
                egress_ports |= {pt.get("port") for pt in ports}
                for peer in peers:
                    cidr = (peer.get("ipBlock") or {}).get("cidr")
                    r.check(cidr not in OPEN_CIDRS, f"{name_of(p)}: egress to {cidr}")
        expected = {PLANE_PORT[role], OPS_PORT}
        r.check(ingress_ports == expected,
                f"{n}: ingress must admit exactly ports {sorted(expected)} "
                f"(got {sorted(ingress_ports, key=str)})")
        r.check({53, 5432} <= egress_ports,
                f"{n}: egress must allow DNS (53) and PostgreSQL (5432)")


def run(docs: list[Doc]) -> Report:
    r = Report()
    check_no_secrets(docs, r)
    check_namespace(docs, r)
    roles = deployments_by_role(docs, r)
    for role, dep in roles.items():
        check_deployment(role, dep, docs, r)
    check_services(roles, docs, r)
    check_pdbs(roles, docs, r)
    check_network(roles, docs, r)
    return r


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", default=str(Path(__file__).parent / "kubernetes"))
    parser.add_argument("--renderer", choices=("auto", "kubectl", "files"), default="auto")
    parser.add_argument("--dump", help="write the rendered manifests here (for schema checks)")
    args = parser.parse_args(argv)
    try:
        docs = render(Path(args.directory), args.renderer)
    except (OSError, yaml.YAMLError, KeyError) as exc:
        print(f"cannot render {args.directory}: {exc}", file=sys.stderr)
        return 2
    if args.dump:
        Path(args.dump).write_text(yaml.safe_dump_all(docs, sort_keys=False))
    report = run(docs)
    for failure in report.failures:
        print(f"FAIL {failure}")
    print(f"{report.checks} policy checks on {len(docs)} objects, "
          f"{len(report.failures)} failed")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
