"""The exception tree of streamsrv: one root, three kinds below it.

```
StreamsrvError
├── ProtocolError    a peer broke a wire protocol (SPDY, channels, resize, Docker's mux)
├── RequestError     a request we refuse (invalid exec/attach/port-forward, bad or spent token)
└── BackendError     a runtime failed (container gone, dial refused, engine error)
    └── EngineUnavailable   the engine cannot be reached at all (answered as 503)
```

An embedder catches ``StreamsrvError`` for everything streamsrv raises on purpose; anything
else escaping a streamsrv call is a bug. This module imports nothing, so every layer
(``streamsrv.protocol`` included) may import it (docs/architecture.md, "Layers").
"""

from __future__ import annotations


class StreamsrvError(Exception):
    """The root of every error streamsrv raises on purpose."""


class ProtocolError(StreamsrvError):
    """A peer (or our own use of a codec) broke a wire protocol."""


class RequestError(StreamsrvError):
    """A request streamsrv refuses; the subclass decides the answer (400, 404, 429, ...)."""


class BackendError(StreamsrvError):
    """A runtime failed; ``str(error)`` is fit to show to the client."""


class EngineUnavailable(BackendError):
    """The runtime's engine cannot be reached (not running, socket gone, connection refused):
    the gateway answers 503 naming it, and a caller may try again once it is back."""


__all__ = ["BackendError", "EngineUnavailable", "ProtocolError", "RequestError", "StreamsrvError"]
