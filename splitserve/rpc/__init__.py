"""gRPC helpers shared by the router and the nodes: the server shell (server.py: health, reflection, drain,
READY line), protobuf <-> engine dataclass conversions (convert.py) and request-id JSON logs (logs.py).
Message limits, channels and the malformed-message guard are in splitserve/grpc_util.py."""
