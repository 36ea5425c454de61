"""The pure core: encoding, commitments, blob IDs and proofs, with no I/O."""
