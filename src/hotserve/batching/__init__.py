"""Dynamic batching in front of a servable (TF Serving's --enable_batching): parameters.py reads
the settings, batcher.py merges requests. Import the submodule you need (the supervisor of
--num_workers reads parameters without paying for numpy)."""
