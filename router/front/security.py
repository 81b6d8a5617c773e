"""The router's security and admission, built from its config: API keys, TLS on the public ports,
mTLS to the nodes, load shedding. router/server.py builds one of each; the gRPC and HTTP fronts
share them (one process, one event loop).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc

from splitserve.tls import TLSFiles
from router.front.admission import Admission, AdmissionConfig
from router.front.auth import ApiKeys
from router.front.grpc_guard import RouterGuard
from router.metrics import ROUTER
from router.config import SecurityConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Security:
    api_keys: ApiKeys
    tls: TLSFiles | None = None
    plaintext_nodes: bool = False
    tls_server_name: str = ""
    cache_salt_per_key: bool = False

    @classmethod
    def load(cls, config: SecurityConfig) -> "Security":
        """Reads the key file and the TLS files; ValueError when one cannot be read."""
        api_keys = ApiKeys.from_sources(config.api_keys_file)
        if config.cache_salt_per_key and not api_keys.enabled:
            raise ValueError("--cache-salt-per-key needs API keys (--api-keys-file or SPLITSERVE_API_KEYS): without "
                             "them every request comes from the same caller")
        tls = TLSFiles.load(config.tls_dir, "router") if config.tls_dir else None
        log.info("API keys: %s; TLS: %s", f"{len(api_keys)} keys" if api_keys.enabled else "off (no keys)",
                 "on" if tls else "off")
        return cls(api_keys, tls, config.plaintext_nodes, config.tls_server_name, config.cache_salt_per_key)

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS on the public gRPC port (clients need no certificate: they bring API keys)."""
        return self.tls.server_credentials(require_client_cert=False) if self.tls else None

    def node_credentials(self) -> grpc.ChannelCredentials | None:
        """mTLS to the nodes: our certificate as the client's, the CA to check theirs."""
        return self.tls.client_credentials() if self.tls and not self.plaintext_nodes else None

    def node_channel_options(self) -> tuple:
        return (("grpc.ssl_target_name_override", self.tls_server_name),) if self.tls_server_name else ()

    def grpc_interceptors(self, admission: Admission) -> tuple:
        return (RouterGuard(self.api_keys, admission, ROUTER.count_error),)


def make_admission(config: AdmissionConfig) -> Admission:
    return Admission(config, on_reject=lambda: ROUTER.count_error(grpc.StatusCode.RESOURCE_EXHAUSTED))
