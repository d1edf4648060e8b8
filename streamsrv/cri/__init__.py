"""The CRI v1 gRPC API (``runtime.v1``): ``api.proto``, its generated messages and a client.

``api_pb2`` (messages only) is generated from ``api.proto`` by ``scripts/gen-proto``; services
are wired by hand with grpc's generic handlers. ``client.CriClient`` calls a CRI endpoint.
"""

import os

# gRPC's fork handlers run in every child forked while its threads are alive: a runtime that
# forks (the process runtime's containers, with a preexec_fn) then got children that died of
# SIGSEGV at once ("Other threads are currently calling into gRPC, skipping fork() handlers",
# exit 139). Nothing here forks to go on using gRPC in the child, so they are turned off,
# before grpc is first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
