"""TLS files and gRPC credentials for the router's public ports and router <-> node mTLS.

A TLS folder holds PEM files named as the Helm chart mounts them: `ca.pem` (the CA that
signed every certificate), `router.pem` + `router-key.pem` (the router: server certificate on
its public ports, client certificate towards the nodes), `node.pem` + `node-key.pem` (nodes).
`splitserve certs --out DIR` writes all of them into one folder for tests and local use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

CA_FILE = "ca.pem"
ROLES = ("router", "node")


@dataclass(frozen=True)
class TLSFiles:
    """One service's TLS material, read from `tls_dir` for `role` (router or node)."""

    ca: bytes
    cert: bytes
    key: bytes
    cert_path: Path
    key_path: Path
    ca_path: Path

    @classmethod
    def load(cls, tls_dir: str | Path, role: str) -> "TLSFiles":
        if role not in ROLES:
            raise ValueError(f"TLS role must be one of {', '.join(ROLES)}, got {role!r}")
        folder = Path(tls_dir)
        paths = (folder / CA_FILE, folder / f"{role}.pem", folder / f"{role}-key.pem")
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise ValueError(f"--tls-dir {folder}: missing {', '.join(missing)} (expected {CA_FILE}, {role}.pem, "
                             f"{role}-key.pem; `splitserve certs --out DIR` makes them)")
        ca, cert, key = (p.read_bytes() for p in paths)
        return cls(ca, cert, key, paths[1], paths[2], paths[0])

    def server_credentials(self, require_client_cert: bool) -> grpc.ServerCredentials:
        """TLS server; with require_client_cert, only clients with a certificate from our CA (mTLS)."""
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.ca,
                                           require_client_auth=require_client_cert)

    def client_credentials(self) -> grpc.ChannelCredentials:
        """mTLS client: verifies the server against our CA and presents our own certificate."""
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                            certificate_chain=self.cert)


def channel_credentials(ca_file: str | Path | None = None, cert_file: str | Path | None = None,
                        key_file: str | Path | None = None) -> grpc.ChannelCredentials:
    """Client credentials from files: CA to trust (None: system roots), optional client certificate."""
    if (cert_file is None) != (key_file is None):
        raise ValueError("a client certificate needs both cert_file and key_file")

    def read(path):
        return Path(path).read_bytes() if path is not None else None

    return grpc.ssl_channel_credentials(read(ca_file), read(key_file), read(cert_file))
