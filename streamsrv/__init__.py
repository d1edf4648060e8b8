"""streamsrv: exec, attach and port-forward into containers, for kubectl, CRI and browsers."""

from __future__ import annotations

__version__ = "0.1.0"
