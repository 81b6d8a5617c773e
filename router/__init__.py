"""The router: the cluster's front door (gRPC Generate), pairing prefill and decode nodes."""
