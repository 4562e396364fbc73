"""ddk.cli: the thin click layer over ddk.cache / ddk.kernels."""
