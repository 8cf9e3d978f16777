"""Operating clickflow: the `process` HTTP endpoint, profiling and tracing."""
