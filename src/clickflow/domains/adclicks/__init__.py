"""The adclicks domain."""
