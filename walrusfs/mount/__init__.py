"""A mounted volume: FUSE operations, file contents, staging, the volume log and volume keys."""
