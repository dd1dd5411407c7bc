"""Environment variables read by more than one hotserve process, named once here so that the
light processes (the CLI, the serving supervisor) need not import the modules that use them
(asyncio and ssl came with those: 3.5 MiB of the supervisor's RSS)."""

ADMIN_TOKEN = "HOTSERVE_ADMIN_TOKEN"  # the management API's token (server/auth.py)
PEER_DIR = "HOTSERVE_PEER_DIR"  # where a supervisor's workers find each other (server/peers.py)
