"""flowaction: joint optical-flow and action recognition."""
__version__ = "0.1.0"


__all__ = ["Recognizer", "Prediction", "__version__"]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def __getattr__(name: str):
    # flowaction.Recognizer / flowaction.Prediction without importing torch for `import flowaction`
    if name in ("Recognizer", "Prediction"):
        from flowaction.inference import recognizer

        return getattr(recognizer, name)
    raise AttributeError(f"module 'flowaction' has no attribute {name!r}")
