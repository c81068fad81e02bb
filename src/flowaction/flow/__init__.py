"""Optical-flow utilities: metrics, file I/O, visualisation, classical methods."""
