"""The WebSocket front door: accepts ``/v1`` upgrades on picows and hands each socket to a
``Session``; plain HTTP requests on the same port go on to ``server.http``.
"""
