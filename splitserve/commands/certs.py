"""`splitserve certs`: make a development CA and TLS certificates for the router and nodes.

The folder it writes is what `--tls-dir` of `splitserve router` and `splitserve node` reads
(ca.pem, router.pem, router-key.pem, node.pem, node-key.pem). For tests and local use only:
production certificates come from your own CA (e.g. cert-manager, see the Helm chart).
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("certs", help="make a development CA and certificates (tests, local use)",
                                   description=__doc__)
    parser.add_argument("--out", required=True, help="folder to write (created if missing)")
    parser.add_argument("--hosts", default="localhost,127.0.0.1,::1",
                        help="comma-separated DNS names and IP addresses the certificates are valid for")
    parser.add_argument("--days", type=int, default=30, help="validity in days (default 30)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from splitserve.devcerts import make_dev_certs

    hosts = tuple(h.strip() for h in args.hosts.split(",") if h.strip())
    try:
        paths = make_dev_certs(args.out, hosts, args.days)
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    for path in paths:
        print(path)
    return 0
