"""The HTTP side of the server: the request router (``app``), the REST API, the admin API and
its operations, the OpenAPI document and the demo page.
"""
