"""hotserve: a model server that updates models while they serve."""

__version__ = "0.1.0"
