"""walrusfs: a verifiable decentralized filesystem on RedStuff-encoded storage peers."""

__version__ = "0.1.0"
