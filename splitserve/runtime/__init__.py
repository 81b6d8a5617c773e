"""The node runtime: an Engine on its own thread (engine_loop.py) and each request's outputs handed to asyncio
(output_stream.py). Used by every node role; knows nothing of gRPC."""
