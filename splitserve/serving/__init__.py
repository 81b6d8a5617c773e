"""Pieces shared by the node services: running an engine on its own thread, request plumbing."""
