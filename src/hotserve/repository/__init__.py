"""The model repository: storage, version discovery, manifests and atomic publish."""
