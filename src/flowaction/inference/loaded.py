"""A trained model ready for inference: the network, its classes and its exact preprocessing.

Loads a flowaction checkpoint (``best.pt``) or a file written by ``flowaction export`` (ONNX), and
turns raw frames into what the network saw in training and evaluation: gray, resized to cover the
training data's stored frame size and centre-cropped to it (as ``prepare`` stores videos), then
centre-cropped to ``data.crop`` and scaled to [0, 1].
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from flowaction.config import LEARNED_INPUTS, Config, from_dict
from flowaction.data.decode import centre_crop, cover_size
from flowaction.engine.device import resolve_device
from flowaction.flow.classical import classical_flow, stacked_classical_flow
from flowaction.models.build import load_model_checkpoint
from flowaction.speedups import apply_cpu_speedups

ONNX_SUFFIXES = (".onnx",)
TORCH_EXPORT_SUFFIXES = (".pt2",)


@dataclass
class InferenceModel:
    """What inference needs from a trained model.

    ``frame_size`` is the stored ``(H, W)`` of the training data; ``crop`` the square side the
    network sees; ``kind`` ``"torch"`` (a checkpoint), ``"onnx"`` or ``"torch-export"`` (files
    written by ``flowaction export``).
    """

    cfg: Config
    classes: list[str]
    frame_size: tuple[int, int]
    kind: str
    model: torch.nn.Module | None = None
    device: torch.device = torch.device("cpu")
    # exported graphs by role, each a function of named float32 arrays -> one array:
    # "main" (clips -> logits; flows -> logits for dis / farneback), "flow" (triplets -> flows,
    # learned inputs), "classifier" (stacked flows, and frames for learned+frames -> logits)
    graphs: dict[str, Callable[..., np.ndarray]] = field(default_factory=dict)

    @property
    def input(self) -> str:
        return self.cfg.model.input

    @property
    def num_frames(self) -> int:
        return self.cfg.data.num_frames

    @property
    def frame_step(self) -> int:
        return self.cfg.data.frame_step

    @property
    def span(self) -> int:
        """Frames of the video one clip covers."""
        return (self.num_frames - 1) * self.frame_step + 1

    @property
    def crop(self) -> int:
        return self.cfg.data.crop

    @property
    def stride(self) -> int:
        return self.cfg.model.triplet_stride

    @property
    def has_flow_network(self) -> bool:
        return self.input in LEARNED_INPUTS

    # -- preprocessing -------------------------------------------------------------------------

    def prepare_frame(self, frame: np.ndarray) -> np.ndarray:
        """One raw frame (``H x W`` gray or ``H x W x 3`` BGR uint8, any size) -> ``crop x crop``
        uint8 gray, as training saw it."""
        frame = np.asarray(frame)
        if frame.ndim == 3 and frame.shape[2] == 3:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        elif frame.ndim == 3 and frame.shape[2] == 1:
            frame = frame[..., 0]
        if frame.ndim != 2:
            raise ValueError(f"a frame must be H x W (gray) or H x W x 3 (BGR), got shape {frame.shape}")
        if frame.dtype != np.uint8:
            raise ValueError(f"a frame must be uint8, got {frame.dtype}")
        out_h, out_w = self.frame_size
        cover = cover_size(frame.shape[0], frame.shape[1], out_h, out_w)
        resized = cv2.resize(frame, (cover[1], cover[0]), interpolation=cv2.INTER_AREA)
        return self.centre_crop(centre_crop(resized, out_h, out_w))

    def centre_crop(self, frames: np.ndarray) -> np.ndarray:
        """Frames at the stored size ``(..., H, W)`` -> their centre ``crop x crop``."""
        height, width = frames.shape[-2:]
        if self.crop > min(height, width):
            raise ValueError(f"crop {self.crop} exceeds the frame size {height}x{width}")
        return centre_crop(frames, self.crop, self.crop)

    # -- the network ---------------------------------------------------------------------------

    def triplet_flows(self, triplets: np.ndarray) -> np.ndarray:
        """Flows ``(N, 2, H, W)`` of triplets ``(N, 3, H, W)`` uint8 (learned inputs only)."""
        if not self.has_flow_network:
            raise ValueError(f"model.input={self.input} has no flow network")
        x = triplets.astype(np.float32)[:, None] / 255.0  # (N, 1, 3, H, W)
        if self.graphs:
            return self.graphs["flow"](triplets=x)
        with torch.inference_mode():
            model = self.model
            flows = model.flow_net(model.normalise(torch.from_numpy(x).to(self.device)))
            return flows.float().cpu().numpy()

    def pair_flows(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """OpenCV flow ``(2, H, W)`` of the model's method (dis / farneback inputs)."""
        return classical_flow(first, second, self.input)

    def logits_from_flows(self, flows: np.ndarray, clips: np.ndarray | None) -> np.ndarray:
        """Logits ``(B, K)`` from stacked flows ``(B, 2, N, H, W)`` (and the clips ``(B, T, H, W)``
        uint8 for ``learned+frames``)."""
        if self.graphs:
            feed = {"flows": np.ascontiguousarray(flows, dtype=np.float32)}
            if self.input == "learned+frames":
                feed["frames"] = _clip_tensor(clips).numpy()
            return self.graphs["classifier"](**feed)
        with torch.inference_mode():
            stacked = torch.from_numpy(np.ascontiguousarray(flows, dtype=np.float32)).to(self.device)
            if self.input in LEARNED_INPUTS:
                frames = None
                if self.input == "learned+frames":
                    frames = _clip_tensor(clips).to(self.device)
                return self.model.classify(stacked, frames).float().cpu().numpy()
            return self.model(stacked)[0].float().cpu().numpy()

    def logits(self, clips: np.ndarray) -> np.ndarray:
        """Logits ``(B, K)`` of whole clips ``(B, T, crop, crop)`` uint8, every input kind."""
        frames = _clip_tensor(clips)
        if self.graphs:
            if self.input in ("dis", "farneback"):
                flows = stacked_classical_flow(frames, self.stride, self.input).numpy()
                return self.graphs["main"](flows=flows.astype(np.float32))
            return self.graphs["main"](frames=frames.numpy())
        with torch.inference_mode():
            frames = frames.to(self.device)
            if self.input in ("dis", "farneback"):
                flows = stacked_classical_flow(frames, self.stride, self.input)
                return self.model(flows)[0].float().cpu().numpy()
            return self.model(frames)[0].float().cpu().numpy()


def _clip_tensor(clips: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(clips, dtype=np.float32) / 255.0)[:, None]


def stored_frame_size(state: dict, cfg: Config) -> tuple[int, int]:
    """The training data's stored ``(H, W)``: recorded in the checkpoint, else the generated
    benchmark's size or the cache's index (if still there), else a square at ``data.crop``."""
    if state.get("frame_size"):
        return int(state["frame_size"][0]), int(state["frame_size"][1])
    if not cfg.data.cache:
        return cfg.data.synthetic.size, cfg.data.synthetic.size
    index = Path(cfg.data.cache) / "index.json"
    if index.is_file():
        height, width = json.loads(index.read_text())["frame_size"]
        return int(height), int(width)
    return cfg.data.crop, cfg.data.crop


def load_model(path: str | Path, device: str = "cpu") -> InferenceModel:
    """A checkpoint (``.pt``) or a file written by ``flowaction export`` (``.onnx``, ``.pt2``)
    -> :class:`InferenceModel`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    if path.suffix.lower() in ONNX_SUFFIXES + TORCH_EXPORT_SUFFIXES:
        return _load_exported(path)
    dev = resolve_device(device)
    loaded = load_model_checkpoint(path)
    if loaded.cfg.model.input == "truth":
        raise ValueError(f"{path} classifies ground-truth flow (model.input=truth, an oracle for generated data): "
                         "videos have none, so it can be evaluated (flowaction eval) but not run on them")
    model = apply_cpu_speedups(loaded.model, loaded.cfg).to(dev).eval()
    return InferenceModel(loaded.cfg, loaded.classes, stored_frame_size(loaded.state, loaded.cfg), "torch", model, dev)


def _load_exported(path: Path) -> InferenceModel:
    """The main file of an export and the files beside it that its metadata names."""
    onnx = path.suffix.lower() in ONNX_SUFFIXES
    info = read_export_metadata(path)
    graphs = {}
    for role, name in info["graphs"].items():
        graph_path = path.with_name(name)
        if not graph_path.is_file():
            raise FileNotFoundError(f"{graph_path} (exported beside {path.name}) does not exist")
        graphs[role] = onnx_runner(graph_path) if onnx else torch_export_runner(graph_path)
    cfg = from_dict(info["config"])
    return InferenceModel(cfg, list(info["classes"]), tuple(info["frame_size"]), "onnx" if onnx else "torch-export",
                          graphs=graphs)


def read_export_metadata(path: Path) -> dict:
    """The ``flowaction`` metadata of an exported file (config, classes, frame size, graphs)."""
    if path.suffix.lower() in ONNX_SUFFIXES:
        try:
            import onnx
        except ImportError as error:  # an optional dependency
            raise ValueError("reading an ONNX file needs onnx and onnxruntime: pip install 'flowaction[export]'") from error
        proto = onnx.load(str(path), load_external_data=False)
        meta = {item.key: item.value for item in proto.metadata_props}
        text = meta.get("flowaction")
    else:
        extra = {"flowaction.json": ""}
        torch.export.load(str(path), extra_files=extra)
        text = extra["flowaction.json"] or None
    if not text:
        raise ValueError(f"{path} was not written by `flowaction export` (no flowaction metadata)")
    return json.loads(text)


#: ONNX Runtime's threads per graph (an environment variable; default: torch's thread count)
ORT_THREADS_ENV = "FLOWACTION_ORT_THREADS"


def onnx_session_options(threads: int | None = None):
    """ONNX Runtime session options for a machine that runs other work too (a robot's other
    models, a second camera): ``threads`` intra-op threads (default ``$FLOWACTION_ORT_THREADS``,
    else torch's thread count), one inter-op thread, sequential execution, and worker threads that
    sleep when a run ends instead of spin-waiting on the cores."""
    import onnxruntime as ort

    if threads is None:
        text = os.environ.get(ORT_THREADS_ENV, "").strip()
        if text and not (text.isdigit() and int(text) > 0):
            raise ValueError(f"{ORT_THREADS_ENV}={text!r}: give a whole number of threads >= 1")
        threads = int(text) if text else torch.get_num_threads()
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def onnx_runner(path: Path, threads: int | None = None) -> Callable[..., np.ndarray]:
    try:
        import onnxruntime as ort
    except ImportError as error:
        raise ValueError("running an ONNX file needs onnxruntime: pip install 'flowaction[export]'") from error
    session = ort.InferenceSession(str(path), onnx_session_options(threads), providers=["CPUExecutionProvider"])
    return lambda **feed: session.run(None, feed)[0]


def torch_export_runner(path: Path) -> Callable[..., np.ndarray]:
    program = torch.export.load(str(path)).module()

    def run(**feed: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return program(**{k: torch.from_numpy(v) for k, v in feed.items()}).numpy()

    return run
