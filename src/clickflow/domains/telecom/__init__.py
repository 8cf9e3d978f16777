"""The telecom domain."""
