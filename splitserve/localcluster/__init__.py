"""A local cluster as processes, for `splitserve up`, tests and benchmarks: LocalCluster (cluster.py),
starting and stopping services (procs.py) and a private redis-server (redis_server.py)."""
