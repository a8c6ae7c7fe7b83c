"""The data path's C sources, shipped as package data (``flowpin_bpf``)."""
