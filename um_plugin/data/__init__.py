"""Offline datasets built from images that ship inside PyPI packages (no download)."""
