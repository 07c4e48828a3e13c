"""The roomwire server: a Metered Realtime v1 compatible realtime rooms service."""

from .config import ServerConfig
from .node import Node

__all__ = ["Node", "ServerConfig"]
