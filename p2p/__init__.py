"""The libp2p adapter: host setup, protocol IDs, framing, request/response and gossip.

It knows nothing of files or blobs; ``walrusfs`` builds on it.
"""
