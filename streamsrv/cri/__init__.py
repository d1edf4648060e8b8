"""The CRI v1 gRPC API (``runtime.v1``): ``api.proto``, its generated messages and a client.

``api_pb2`` (messages only) is generated from ``api.proto`` by ``scripts/gen-proto``; services
are wired by hand with grpc's generic handlers. ``client.CriClient`` calls a CRI endpoint.
"""
