"""The HTTP edge: reading requests, writing responses, the one error boundary."""
