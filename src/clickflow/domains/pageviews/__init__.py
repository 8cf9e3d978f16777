"""The pageviews domain."""
