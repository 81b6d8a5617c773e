"""Names shared by the Helm chart and the router's Kubernetes discovery.

The chart sets these labels on node pods; discovery selects and classifies pods by them.
"""

ROLE_LABEL = "splitserve.io/role"
COMPONENT_LABEL = "app.kubernetes.io/component"
NAME_LABEL = "app.kubernetes.io/name"
APP_NAME = "splitserve"

ROLE_PREFILL = "prefill"
ROLE_DECODE = "decode"
ROLE_MIXED = "mixed"  # colocated: takes both phases (Splitwise's mixed pool)
NODE_ROLES = (ROLE_PREFILL, ROLE_DECODE, ROLE_MIXED)
# KV transports a node names (its --transport, its KVTarget): see splitserve.kvtransfer.transport_backend
KV_TRANSPORTS = ("torch", "gloo", "grpc")
KV_CACHE_DTYPES = ("auto", "float32", "bfloat16", "float16")  # --kv-cache-dtype: auto is the model's dtype

# Default ports, used by the services' flags and the chart.
DEFAULT_ROUTER_GRPC_PORT = 50050
DEFAULT_ROUTER_HTTP_PORT = 8000
DEFAULT_NODE_GRPC_PORT = 50051
DEFAULT_KV_PORT = 29500
DEFAULT_METRICS_PORT = 9100
