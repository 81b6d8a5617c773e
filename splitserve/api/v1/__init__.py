"""Generated protobuf and gRPC code (v1). Regenerate with `make proto`; never edit by hand."""
