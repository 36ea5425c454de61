"""A storage peer: its service, store, log replication, healing, challenges and invalid-blob attestations."""
