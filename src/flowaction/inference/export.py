"""``flowaction export``: a trained model as ONNX or ``torch.export`` graphs, checked on the spot.

Graphs (every one with a dynamic batch dimension), by model input:

* ``learned`` / ``learned+frames``: ``OUT`` frames ``(B, 1, T, H, W)`` in [0, 1] -> logits;
  ``OUT.flow`` triplets ``(N, 1, 3, H, W)`` -> flows ``(N, 2, H, W)`` in pixels (the flow-only
  graph); ``OUT.classifier`` stacked flows ``(B, 2, N, H, W)`` (and frames for ``learned+frames``)
  -> logits, so that a streaming recogniser can reuse the flows of triplets it has seen.
* ``frames``: ``OUT`` frames -> logits.
* ``dis`` / ``farneback``: ``OUT`` stacked OpenCV flows -> logits (OpenCV runs outside the graph).

Each file carries the config, classes and stored frame size as metadata, so
``Recognizer.from_checkpoint(OUT)`` runs it with the training preprocessing.
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from flowaction.config import FRAME_INPUTS, LEARNED_INPUTS, to_dict
from flowaction.files import ensure_writable
from flowaction.inference.loaded import InferenceModel, load_model, onnx_runner, torch_export_runner
from flowaction.triplets import num_triplets

FORMATS = {"onnx": ".onnx", "torch-export": ".pt2"}
TOLERANCE = 1e-4  # max abs difference on the outputs against PyTorch


class _Logits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.model(frames)[0]


class _Flows(torch.nn.Module):  # holds the flow network only, so its file carries only its weights
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.flow_net, self.normalise = model.flow_net, model.normalise

    def forward(self, triplets: torch.Tensor) -> torch.Tensor:
        return self.flow_net(self.normalise(triplets))


class _Classifier(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, flows: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.classify(flows, frames)


class _ClassifyFlows(torch.nn.Module):  # dis / farneback: the ResNet on given flows
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, flows: torch.Tensor) -> torch.Tensor:
        return self.model(flows)[0]


def _graphs(model: InferenceModel) -> dict[str, tuple[torch.nn.Module, dict[str, torch.Tensor]]]:
    """role -> (module, example inputs by name) for a model's input kind (batch 2 examples)."""
    generator = torch.Generator().manual_seed(0)
    t, c = model.num_frames, model.crop
    n = num_triplets(model.span, model.stride) if model.frame_step == 1 else num_triplets(t, model.stride)
    frames = torch.rand(2, 1, t, c, c, generator=generator)
    flows = torch.randn(2, 2, n, c, c, generator=generator)
    net = model.model
    if model.input in LEARNED_INPUTS:
        classifier_inputs = {"flows": flows, **({"frames": frames} if model.input == "learned+frames" else {})}
        return {
            "main": (_Logits(net), {"frames": frames}),
            "flow": (_Flows(net), {"triplets": torch.rand(2, 1, 3, c, c, generator=generator)}),
            "classifier": (_Classifier(net), classifier_inputs),
        }
    if model.input in FRAME_INPUTS:
        return {"main": (_Logits(net), {"frames": frames})}
    return {"main": (_ClassifyFlows(net), {"flows": flows})}


def export_model(checkpoint: str | Path, out: str | Path, fmt: str = "onnx", log: Callable[[str], None] = print) -> dict:
    """Export ``checkpoint`` to ``out`` (and the files beside it) in ``fmt``; check every graph
    against PyTorch (batch 2 and 3) and, for ONNX, run it with ONNX Runtime. Returns a report.

    Raises:
        ValueError: an unknown format, or a graph whose outputs differ by more than 1e-4.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {tuple(FORMATS)}")
    out = Path(out)
    if out.suffix.lower() != FORMATS[fmt]:
        raise ValueError(f"--format {fmt} writes a {FORMATS[fmt]} file: name it e.g. {out.with_suffix(FORMATS[fmt])}")
    model = load_model(checkpoint, "cpu")
    if model.kind != "torch":
        raise ValueError(f"{checkpoint} is an exported file already: export a checkpoint (.pt)")
    graphs = _graphs(model)
    names = {role: out.name if role == "main" else f"{out.stem}.{role}{out.suffix}" for role in graphs}
    for name in names.values():  # every file writable before the export's work, not after it
        ensure_writable(out.with_name(name), "export file")
    metadata = json.dumps({"config": to_dict(model.cfg), "classes": model.classes, "frame_size": list(model.frame_size),
                           "input": model.input, "graphs": names, "format": 1})
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"format": fmt, "input": model.input, "files": {}, "max_abs_diff": {}}
    for role, (module, example) in graphs.items():
        path = out.with_name(names[role])
        module.eval()
        if fmt == "onnx":
            _export_onnx(module, example, path, metadata)
        else:
            _export_torch(module, example, path, metadata)
        report["files"][role] = str(path)
        report["max_abs_diff"][role] = _check(module, example, path, fmt)
        log(f"{role:10s} {path}: max |difference| to PyTorch {report['max_abs_diff'][role]:.2e} (batch 2 and 3)")
    worst = max(report["max_abs_diff"].values())
    if worst > TOLERANCE:
        raise ValueError(f"exported graphs differ from PyTorch by {worst:.2e} > {TOLERANCE:g}; files kept for inspection")
    return report


def _dynamic(example: dict[str, torch.Tensor]) -> dict[str, dict[int, torch.export.Dim]]:
    batch = torch.export.Dim("batch", min=1, max=4096)
    return {name: {0: batch} for name in example}


def _export_onnx(module: torch.nn.Module, example: dict[str, torch.Tensor], path: Path, metadata: str) -> None:
    try:
        import onnx
    except ImportError as error:
        raise ValueError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'flowaction[export]'") from error
    # the exporter logs a warning per torchvision operator it cannot register: we use none
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (), None, kwargs=example, input_names=list(example),
                                    output_names=["output"], dynamic_shapes=_dynamic(example), dynamo=True,
                                    verbose=False)
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = "flowaction", metadata
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save(proto, str(tmp))
    tmp.replace(path)


def _export_torch(module: torch.nn.Module, example: dict[str, torch.Tensor], path: Path, metadata: str) -> None:
    with torch.no_grad():
        program = torch.export.export(module, (), kwargs=example, dynamic_shapes=_dynamic(example))
    tmp = path.with_name(f".{path.name}.tmp")
    torch.export.save(program, str(tmp), extra_files={"flowaction.json": metadata})
    tmp.replace(path)


def _check(module: torch.nn.Module, example: dict[str, torch.Tensor], path: Path, fmt: str) -> float:
    """Max abs difference between the exported graph and ``module`` at batch 2 and batch 3."""
    run = onnx_runner(path) if fmt == "onnx" else torch_export_runner(path)
    worst = 0.0
    generator = torch.Generator().manual_seed(1)
    for batch in (2, 3):
        feed = {name: torch.rand(batch, *value.shape[1:], generator=generator) for name, value in example.items()}
        with torch.no_grad():
            expected = module(**feed).numpy()
        got = run(**{name: value.numpy() for name, value in feed.items()})
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst
