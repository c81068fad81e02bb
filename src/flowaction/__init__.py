"""flowaction: joint optical-flow and action recognition."""
__version__ = "0.1.0"
