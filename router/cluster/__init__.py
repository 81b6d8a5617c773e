"""The router's cluster control: which nodes exist (nodes.py, discovery.py, health.py), which pair
takes a request (policies.py, prefix_index.py), and running it on them across failures
(orchestrator.py, failover.py, stall.py) through the node client (node_client.py)."""
