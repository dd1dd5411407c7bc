"""Compression at publish time: build smaller variants of a published version (graph
optimization, int8 quantization, fp16 weights, structured pruning), measure them on this host
with the server's thread settings, score them on real data, and publish only those that pass
both gates (metric drop and speedup), through stage + commit like any other user.

This layer uses the repository's publish, core's gate metrics and the runtimes' loader; it
knows nothing of serving internals (see DESIGN.md, "compress").
"""
