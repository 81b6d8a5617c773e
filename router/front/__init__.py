"""The router's front door: what clients talk to. The gRPC Router service (grpc_servicer.py) and the
OpenAI HTTP API (http_*.py, openai_*.py) share request intake (intake.py: prompt formats, validation ->
Job), text output (completion.py), admission (load shedding, deadlines) and security (API keys, TLS)."""
