"""A Walrus-compatible HTTP gateway: publisher (PUT /v1/blobs) and aggregator (GET /v1/blobs/...) over walrusfs.

``app`` is the ASGI application, ``ranges`` the pure Range parsing, ``errors`` Walrus's error
envelope, ``server`` runs it on hypercorn's trio worker; ``openapi.json`` documents every
route and answer (served at ``GET /v1/api``).
"""
