"""The WebRTC half of the SDK: ``MeteredPeer`` and ``RemotePeer`` on aiortc, with the pure
negotiation and roster decisions, the signals they exchange, SDP helpers and aiortc shims.

Importing a module here needs aiortc and PyAV (``pip install 'roomwire[webrtc]'``); the public
names are re-exported lazily by ``roomwire.client``.
"""
