"""An asyncio client for exec, attach and port-forward against any Kubernetes API server
(docs/client.md).

```python
from streamsrv.client import Client

client = Client.from_kubeconfig()
result = await client.run("web", ["sh", "-c", "echo hi; exit 3"])
assert (result.exit_code, result.stdout) == (3, b"hi\\n")
```

Built on ``websockets``; speaks ``v5.channel.k8s.io`` (stdin half-close), ``v4.channel.k8s.io``
and the unversioned channel protocol for exec/attach, and the v4 channel protocol for
port-forward. :mod:`streamsrv.client.sync` wraps it for programs without an event loop.
"""

from .api import Client
from .config import ClientConfig, load_kubeconfig
from .errors import (
    ClientError,
    ConfigError,
    ConnectFailed,
    ConnectionLost,
    Forbidden,
    HalfCloseUnsupported,
    NotFound,
    PortForwardError,
    RemoteError,
    Unauthorized,
    UpgradeError,
)
from .portforward import Forwarder
from .remotecommand import Completed, Process, Stdin
from .streams import ByteStream

__all__ = [
    "ByteStream",
    "Client",
    "ClientConfig",
    "ClientError",
    "Completed",
    "ConfigError",
    "ConnectFailed",
    "ConnectionLost",
    "Forbidden",
    "Forwarder",
    "HalfCloseUnsupported",
    "NotFound",
    "PortForwardError",
    "Process",
    "RemoteError",
    "Stdin",
    "Unauthorized",
    "UpgradeError",
    "load_kubeconfig",
]
