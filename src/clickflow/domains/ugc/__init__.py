"""The ugc domain."""
