"""Black-box interop tests: the official client SDKs against our server.

A package, so that its conftest.py does not take the module name ``conftest`` from
tests/conftest.py, which the other test modules import helpers from.
"""
