"""The container engine (no grpc here): see agent/container/engine.py for its public API."""
