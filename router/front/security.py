"""The router's public fronts from its flags: API keys, TLS, load shedding, the HTTP server.

router/server.py calls these; the gRPC servicer and the HTTP app share one Frontend,
Orchestrator and Admission (one process, one event loop).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc

from splitserve.tls import TLSFiles
from router.front.admission import Admission, AdmissionConfig
from router.front.auth import ApiKeys
from router.front.grpc_guard import RouterGuard
from router.metrics import ROUTER

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Security:
    api_keys: ApiKeys
    tls: TLSFiles | None = None
    plaintext_nodes: bool = False
    tls_server_name: str = ""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Security":
        api_keys = ApiKeys.from_sources(args.api_keys_file)
        tls = TLSFiles.load(args.tls_dir, "router") if args.tls_dir else None
        log.info("API keys: %s; TLS: %s", f"{len(api_keys)} keys" if api_keys.enabled else "off (no keys)",
                 "on" if tls else "off")
        return cls(api_keys, tls, args.plaintext_nodes, args.tls_server_name)

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


def admission_from_args(args: argparse.Namespace) -> Admission:
    config = AdmissionConfig(max_requests=args.max_queue, retry_after_s=args.retry_after_s,
                             timeout_s=args.request_timeout_s)
    return Admission(config, on_reject=lambda: ROUTER.count_error(grpc.StatusCode.RESOURCE_EXHAUSTED))


def http_server(args: argparse.Namespace, frontend, orchestrator, admission: Admission, security: Security):
    """The OpenAI-compatible HTTP server (not started), or None with --http-port 0."""
    if args.http_port == 0:
        return None
    from router.front.http_api import HttpContext, create_app
    from router.front.http_server import HttpServer

    model_name = args.served_model_name or Path(args.model).resolve().name
    context = HttpContext(frontend, orchestrator, admission, security.api_keys, model_name, args.max_request_bytes,
                          ROUTER.count_error)
    return HttpServer(create_app(context), args.host, args.http_port, security.tls)
