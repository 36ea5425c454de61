"""Talking to the committee: calling members and the blob client built on it."""
