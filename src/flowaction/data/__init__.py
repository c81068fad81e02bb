"""Data: generated benchmark, video decoding, clip cache and sampling."""
