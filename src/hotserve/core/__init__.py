"""The manager: which versions are live, loading them off the request path, swapping, draining."""
