"""sslyze against the data and admin planes, checked against Mozilla "intermediate".

Runs in the conformance venv (``var/conformance-venv``): sslyze pins a
``cryptography`` older than the project's, so it is kept apart. Both planes
demand a client certificate, so the scan presents one (a partner's service
principal on the data plane, a security admin on the admin plane); without it
no cipher suite could be tested. (That a connection without one gets nothing
is checked with ``openssl s_client`` in run.sh.)

The only tolerated deviation from the profile is certificate path validation
against the public trust stores: a private CA cannot pass it. The chain must
validate against the gateway's own CA instead (checked here). Everything else
(TLS versions, TLS 1.2 cipher suites, TLS 1.3 suites, key-exchange groups,
key sizes, certificate type and lifetime, compression, renegotiation,
Heartbleed, ROBOT, CCS injection, fallback SCSV, extended master secret) must
pass.

    python conformance/tls_scan.py --endpoints FILE
Exit 0 when both planes comply, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sslyze import (
    CertificateInfoExtraArgument,
    ClientAuthenticationCredentials,
    ScanCommandsExtraArguments,
    Scanner,
    ServerNetworkConfiguration,
    ServerNetworkLocation,
    ServerScanRequest,
    ServerScanResult,
    ServerScanStatusEnum,
)
from sslyze.mozilla_tls_profile.tls_config_checker import (
    SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
    MozillaTlsConfiguration,
    ServerNotCompliantWithTlsConfiguration,
    ServerScanResultIncomplete,
    TlsConfigurationEnum,
    check_server_against_tls_configuration,
)

# A private CA is not in any public trust store; it is checked against our CA below.
TOLERATED = {"certificate_path_validation"}
CUSTOM_STORE = "Supplied CA file"  # sslyze's name for the trust store from custom_ca_file


def _request(ep: dict[str, Any], port: int, cert: str, key: str) -> ServerScanRequest:
    creds = ClientAuthenticationCredentials(certificate_chain_path=Path(cert), key_path=Path(key))
    return ServerScanRequest(
        server_location=ServerNetworkLocation("localhost", port, ip_address=ep["host"]),
        network_configuration=ServerNetworkConfiguration(
            tls_server_name_indication="localhost", tls_client_auth_credentials=creds),
        scan_commands=set(SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER),
        scan_commands_extra_arguments=ScanCommandsExtraArguments(
            certificate_info=CertificateInfoExtraArgument(custom_ca_file=Path(ep["ca"]))),
    )


def _describe(result: ServerScanResult) -> list[str]:
    """What the server accepts, in a few lines (for the log)."""
    scan = result.scan_result
    assert scan is not None
    lines = []
    for field, name in (("ssl_2_0_cipher_suites", "SSLv2"), ("ssl_3_0_cipher_suites", "SSLv3"),
                        ("tls_1_0_cipher_suites", "TLSv1.0"), ("tls_1_1_cipher_suites", "TLSv1.1"),
                        ("tls_1_2_cipher_suites", "TLSv1.2"), ("tls_1_3_cipher_suites", "TLSv1.3")):
        attempt = getattr(scan, field)
        if attempt.result is None:
            lines.append(f"{name}: scan failed ({attempt.error_reason})")
            continue
        suites = [s.cipher_suite.name for s in attempt.result.accepted_cipher_suites]
        lines.append(f"{name}: {', '.join(suites) if suites else 'refused'}")
    curves = scan.elliptic_curves.result
    if curves is not None:
        names = [c.name for c in curves.supported_curves or ()]
        lines.append(f"key-exchange groups: {', '.join(names) or 'none'}")
    return lines


def _errors(result: ServerScanResult) -> str:
    """The scan commands that did not complete, and why."""
    assert result.scan_result is not None
    failed = []
    for command in sorted(SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER, key=lambda c: c.value):
        attempt = getattr(result.scan_result, command.value)
        if attempt.result is None:
            trace = attempt.error_trace
            why = list(trace.format_exception_only())[-1].strip() if trace else ""
            failed.append(f"{command.value}: {attempt.error_reason} {why}".strip())
    return "; ".join(failed) or "no command failed"


def _custom_ca_validates(result: ServerScanResult) -> bool:
    """Does the served chain validate against the gateway's own CA?"""
    assert result.scan_result is not None
    info = result.scan_result.certificate_info.result
    if info is None:
        return False
    return all(any(p.trust_store.name == CUSTOM_STORE and p.was_validation_successful
                   for p in d.path_validation_results)
               for d in info.certificate_deployments)


def check(plane: str, result: ServerScanResult) -> list[str]:
    """Problems found on one plane (empty: it complies)."""
    print(f"--- {plane} plane: {result.server_location.ip_address}:"
          f"{result.server_location.port}")
    if result.scan_status != ServerScanStatusEnum.COMPLETED:
        return [f"{plane}: scan did not complete: {result.connectivity_error_trace}"]
    problems = []
    for line in _describe(result):
        print(line)
    profile = MozillaTlsConfiguration.get(TlsConfigurationEnum.MOZILLA_INTERMEDIATE)
    try:
        check_server_against_tls_configuration(result, profile)
        issues: dict[str, str] = {}
    except ServerNotCompliantWithTlsConfiguration as exc:
        issues = exc.issues
    except ServerScanResultIncomplete as exc:
        return [f"{plane}: {exc} ({_errors(result)})"]
    for key, text in sorted(issues.items()):
        tolerated = key in TOLERATED
        print(f"{'tolerated' if tolerated else 'ISSUE'}: {key}: {text}")
        if not tolerated:
            problems.append(f"{plane}: {key}: {text}")
    if not _custom_ca_validates(result):
        problems.append(f"{plane}: the server chain does not validate against the gateway CA")
    print(f"Mozilla intermediate: {'FAIL' if problems else 'pass'}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", required=True, help="JSON written by conformance/stack.py")
    args = parser.parse_args()
    ep = json.loads(Path(args.endpoints).read_text())
    planes = {
        ep["data_port"]: ("data", _request(ep, ep["data_port"], ep["data_cert"], ep["data_key"])),
        ep["admin_port"]: ("admin", _request(ep, ep["admin_port"], ep["admin_cert"],
                                             ep["admin_key"])),
    }
    scanner = Scanner()
    scanner.queue_scans([request for _, request in planes.values()])
    problems = []
    for result in scanner.get_results():
        problems += check(planes[result.server_location.port][0], result)
    for problem in problems:
        print(f"FAIL {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
