"""roomwire: a self-hosted realtime rooms service for WebRTC, and its Python SDK.

The server half speaks the Metered Realtime v1 wire protocol (see ``roomwire.server``);
the SDK half (``roomwire.client``) talks to it, or to any compatible server.
"""

__version__ = "0.1.0"
