"""The pub/sub half of the SDK: ``SignallingClient`` and what it is built from (the WebSocket
transport, reconnect decisions, connection state, options, URL rules, its events and errors).

Needs no WebRTC stack; the public names are re-exported by ``roomwire.client``.
"""
