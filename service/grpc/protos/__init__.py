"""Generated gRPC code of Triton's `grpc_service.proto` / `model_config.proto` (package `inference`).

Committed; regenerate with `make grpc-protos` (scripts/generate_grpc.py) after changing the vendored .proto files.
"""
