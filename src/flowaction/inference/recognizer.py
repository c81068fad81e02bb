"""Streaming recognition for frames that arrive one at a time (a camera on a robot).

A ring buffer holds exactly the frames one clip needs. Flows are cached per frame pair: with a flow
network, triplet ``(i, i+1, i+2)`` goes through it once, when frame ``i+2`` arrives, and its flow is
reused by every later clip that contains it; a ``dis`` / ``farneback`` model computes OpenCV flow
once per pair. So a new frame costs at most one triplet (or pair), not a whole clip, and memory is
bounded by the clip, whatever the length of the stream.
"""
from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flowaction.config import FRAME_INPUTS
from flowaction.inference.loaded import InferenceModel, load_model
from flowaction.inference.predict import softmax, top_k
from flowaction.triplets import num_triplets


@dataclass
class Prediction:
    """One prediction of a :class:`Recognizer`.

    ``labels`` / ``probabilities``: the top-k, most probable first; ``frame``: index (from 0, in
    pushed frames) of the newest frame of the clip; ``latency_ms``: from the call of ``push`` that
    completed the clip to the prediction.
    """

    labels: list[str]
    probabilities: list[float]
    frame: int
    latency_ms: float
    scores: np.ndarray = field(repr=False, default=None)  # softmax over every class

    @property
    def label(self) -> str:
        return self.labels[0]

    @property
    def probability(self) -> float:
        return self.probabilities[0]

    def to_dict(self) -> dict:
        return {"frame": self.frame, "labels": self.labels, "probabilities": self.probabilities,
                "latency_ms": self.latency_ms}


class Recognizer:
    """Classify a stream of frames with a trained model.

    >>> rec = Recognizer.from_checkpoint("runs/exp1/best.pt", device="cpu")   # doctest: +SKIP
    >>> for frame in frames:                                                    # doctest: +SKIP
    ...     prediction = rec.push(frame)   # None until a clip is full, then every `every` frames
    """

    def __init__(self, model: InferenceModel, every: int = 1, top_k: int = 5) -> None:
        if every < 1 or top_k < 1:
            raise ValueError("every and top_k must be >= 1")
        self.model = model
        self.every = every
        self.top_k = min(top_k, len(model.classes))
        self.frames: deque[np.ndarray] = deque(maxlen=model.span)  # preprocessed, newest last
        self._flows: OrderedDict[int, np.ndarray] = OrderedDict()  # first frame of a pair -> its flow
        self.pushed = 0
        self.flow_computations = 0  # triplets (or pairs) put through the flow computation
        # the clip's triplets start at these offsets from its first frame (the stacked flows' pairs)
        self._pair_offsets = [j * model.stride for j in range(num_triplets(model.num_frames, model.stride))]

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", every: int = 1, top_k: int = 5) -> "Recognizer":
        """From a flowaction checkpoint or a file written by ``flowaction export`` (``.onnx``)."""
        return cls(load_model(path, device), every, top_k)

    @property
    def classes(self) -> list[str]:
        return self.model.classes

    def reset(self) -> None:
        """Forget the frames seen (e.g. after a cut or a camera switch)."""
        self.frames.clear()
        self._flows.clear()
        self.pushed = 0

    def push(self, frame: np.ndarray) -> Prediction | None:
        """Add the newest frame (``H x W`` gray or ``H x W x 3`` BGR uint8, any size); return a
        prediction when a clip is full and ``every`` frames have passed since the last one."""
        started = time.perf_counter()
        index = self.pushed
        self.frames.append(self.model.prepare_frame(frame))
        self.pushed += 1
        self._update_flows(index)
        if self.pushed < self.model.span or (self.pushed - self.model.span) % self.every:
            return None
        scores = softmax(self._clip_logits(index))[0]
        best = top_k(scores, self.classes, self.top_k)
        return Prediction([item["label"] for item in best], [item["probability"] for item in best], index,
                          1000.0 * (time.perf_counter() - started), scores)

    # -- internals ---------------------------------------------------------------------------

    def _frame(self, index: int) -> np.ndarray:
        """The preprocessed frame of stream index ``index`` (still in the buffer)."""
        return self.frames[len(self.frames) - (self.pushed - index)]

    def _update_flows(self, newest: int) -> None:
        """Compute the one flow that frame ``newest`` completes, and drop flows no clip needs."""
        model = self.model
        if model.input in FRAME_INPUTS or model.frame_step != 1:
            return  # frames only, or clips that skip frames: flows are computed per clip instead
        if model.has_flow_network:
            first = newest - 2  # triplet (first, first+1, first+2) is complete
            if first >= 0:
                triplet = np.stack([self._frame(first + k) for k in range(3)])[None]
                self._flows[first] = model.triplet_flows(triplet)[0]
                self.flow_computations += 1
        else:
            first = newest - 1  # pair (first, first+1)
            if first >= 0:
                self._flows[first] = model.pair_flows(self._frame(first), self._frame(first + 1))
                self.flow_computations += 1
        oldest_needed = self.pushed - model.span
        while self._flows and next(iter(self._flows)) < oldest_needed:
            self._flows.popitem(last=False)

    def _clip_logits(self, newest: int) -> np.ndarray:
        model = self.model
        clip = np.stack(list(self.frames))[None]  # (1, T, c, c): the buffer is exactly one clip
        if model.input in FRAME_INPUTS or model.frame_step != 1:
            return model.logits(clip)
        start = newest - model.span + 1
        # (1, 2, N, c, c): the clip's triplet flows, stacked as the classifier reads them
        flows = np.stack([self._flows[start + offset] for offset in self._pair_offsets], axis=1)[None]
        return model.logits_from_flows(flows, clip)
