"""Inference with a trained model: video files (:mod:`.predict`), streams (:mod:`.recognizer`),
exported graphs (:mod:`.export`)."""
