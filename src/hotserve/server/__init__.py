"""Network front ends: the REST (ASGI) server, health, and the process that runs them."""
