"""The traffic engine shared by all domains (`clickflow generate`)."""
