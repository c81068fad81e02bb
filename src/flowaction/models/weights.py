"""Weights from files, read without executing pickled code.

**The flow network's own file** (``flownet.pt``, written by ``pretrain-flow``; the network shipped
in the package is one): the flow network's tensors and its width, what ``model.flow_init`` reads.

**``model.init=PATH``**: start training from other weights, and say what was taken. Two sources:

* a flowaction checkpoint (``best.pt`` / ``last.pt``): every tensor whose name and shape fit the
  new model is taken (e.g. all but the classifier when the number of classes differs);
* a checkpoint of Hara et al.'s 3D ResNets (``{"state_dict": ..., "arch": ...}``, ``module.``
  prefixes from ``DataParallel`` removed): its tensors go into the action network, whose layer
  names are the same. Their first layer reads 3-channel RGB; ours reads 1 (gray frames), 2 (the
  flows' u, v) or 3 (u, v and the gray frame) channels. Rule: a gray channel takes the **sum** of
  the RGB filters (a gray frame repeated as RGB gives the response it was trained to give); any
  other channel (flow) takes their **mean** (the cross-modality initialisation of temporal
  segment networks), so the layer's response to a constant input keeps its scale.

Anything that does not fit is left as initialised, and the report lists it.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from flowaction.checkpoint import load_checkpoint, load_weights, read_torch_file, save_checkpoint
from flowaction.config import FRAME_INPUTS
from flowaction.models.flownet import FlowNet


FLOW_WEIGHTS = "flownet.pt"
FLOW_KIND = "flownet"


#: the flow networks shipped with the package, by ``model.flow_init`` name (docs/flow.md gives the
#: command, data and figures of each): ``default``, self-supervised on the generated motion
#: benchmark; ``actions``, that network continued on the articulated-action benchmark's photographs;
#: ``scenes``, a pyramid network (``model.flow_pyramid=true``) self-supervised on flow scenes of real
#: photographs at 112 px
SHIPPED_FLOW = {"default": "flownet-default.pt", "actions": "flownet-actions.pt", "scenes": "flownet-scenes.pt"}


#: the search's keys a flow file and a run's config hold (files written before they existed: the defaults)
SEARCH_KEYS = {"flow_features": False, "flow_search": 2}


def shipped_flow_weights(name: str) -> Path:
    """The file of a shipped flow network (a name of :data:`SHIPPED_FLOW`)."""
    return Path(str(resources.files("flowaction") / "weights" / SHIPPED_FLOW[name]))


def default_flow_weights() -> Path:
    """The flow network shipped with the package as ``model.flow_init=default``."""
    return shipped_flow_weights("default")


def save_flow_weights(path: str | os.PathLike, flow_net: FlowNet, meta: dict[str, Any]) -> None:
    """Write a flow network as plain tensors plus its width (atomic)."""
    state = {"kind": FLOW_KIND, "flow_width": flow_net.width, "flow_refine": flow_net.refine,
             "flow_pyramid": flow_net.pyramid, "flow_features": flow_net.features, "flow_search": flow_net.search_radius,
             "model": flow_net.state_dict(), "meta": meta}
    save_checkpoint(path, {**state, "config": {}, "classes": []})


def load_flow_weights(flow_net: FlowNet, source: str | os.PathLike) -> dict:
    """Load ``source`` (a name of :data:`SHIPPED_FLOW`, a ``flownet.pt`` or a joint-model checkpoint) into
    ``flow_net`` strictly. Raises ValueError naming the mismatch (e.g. another width)."""
    path = shipped_flow_weights(str(source)) if str(source) in SHIPPED_FLOW else Path(source)
    state = load_checkpoint(path)
    if state.get("kind") == FLOW_KIND:
        weights, width = state["model"], state["flow_width"]
        refine = state.get("flow_refine", False)
        pyramid = state.get("flow_pyramid", False)
        search = {key: state.get(key, default) for key, default in SEARCH_KEYS.items()}
    else:  # a whole flowaction run checkpoint: take its flow network
        weights = {k[len("flow_net."):]: v for k, v in state["model"].items() if k.startswith("flow_net.")}
        if not weights:
            raise ValueError(f"{path} holds no flow network (model.input "
                             f"{state.get('config', {}).get('model', {}).get('input')!r})")
        model_cfg = state.get("config", {}).get("model", {})
        width = model_cfg.get("flow_width")
        refine = model_cfg.get("flow_refine", False)
        pyramid = model_cfg.get("flow_pyramid", False)
        search = {key: model_cfg.get(key, default) for key, default in SEARCH_KEYS.items()}
    if width != flow_net.width:
        raise ValueError(f"{path} holds a flow network of width {width}; this model has model.flow_width="
                         f"{flow_net.width}: set model.flow_width={width} or pre-train one of that width")
    if pyramid != flow_net.pyramid:
        have, want = ("with", "without") if pyramid else ("without", "with")
        raise ValueError(f"{path} holds a flow network {have} the search at every level; this model has "
                         f"model.flow_pyramid={str(flow_net.pyramid).lower()}: set model.flow_pyramid="
                         f"{str(pyramid).lower()} or pre-train one {want} it")
    if pyramid:  # what the search compares and how far it reaches
        for key, have in (("flow_features", flow_net.features), ("flow_search", flow_net.search_radius)):
            if search[key] != have:
                setting = str(search[key]).lower()
                raise ValueError(f"{path} holds a flow network with model.{key}={setting}; this model has "
                                 f"model.{key}={str(have).lower()}: set model.{key}={setting} or pre-train one with it")
    if flow_net.refine and not refine:
        # a network without the full-resolution level starts one with it: the new level's output
        # layer starts at zero, so the flow equals the loaded network's until training moves it
        fresh = {k: torch.zeros_like(v) if k.startswith("predict0.") else v
                 for k, v in flow_net.state_dict().items() if k.startswith(("dec0.", "predict0."))}
        weights = {**weights, **fresh}
    elif refine and not flow_net.refine:
        raise ValueError(f"{path} holds a flow network with the full-resolution level; this model has "
                         f"model.flow_refine=false: set model.flow_refine=true or pre-train one without it")
    load_weights(flow_net, weights, path)
    return state.get("meta", {})


def _strip(state: dict) -> dict:
    return {(key[len("module."):] if key.startswith("module.") else key): value for key, value in state.items()}


def _adapt_first_layer(weight: torch.Tensor, channels: list[str]) -> torch.Tensor:
    """RGB filters ``(out, 3, t, h, w)`` -> one filter per input channel by the module's rule."""
    summed, mean = weight.sum(dim=1, keepdim=True), weight.mean(dim=1, keepdim=True)
    return torch.cat([summed if kind == "gray" else mean for kind in channels], dim=1)


def input_channels(model_input: str) -> list[str]:
    """The kinds of the action network's input channels for a ``model.input``."""
    if model_input in FRAME_INPUTS:
        return ["gray"]
    return ["flow", "flow", "gray"] if model_input == "learned+frames" else ["flow", "flow"]


def initialise_from(model: torch.nn.Module, path: str | Path, model_input: str) -> dict:
    """Copy the weights of ``path`` that fit into ``model``; return the report.

    Raises:
        FileNotFoundError / ValueError: no file, not a readable checkpoint, or nothing fits.
    """
    path = Path(path)
    state = read_torch_file(path)
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state dict (a {type(state).__name__})")
    target = model.state_dict()
    if "model" in state and "format" in state:  # flowaction
        source, kind = state["model"], "flowaction"
        prefix = ""
    elif "state_dict" in state or all(isinstance(v, torch.Tensor) for v in state.values()):
        source, kind = _strip(state.get("state_dict", state)), f"3D ResNet ({state.get('arch', 'unknown arch')})"
        prefix = "action_net."  # Hara et al.'s layer names are our action network's
        if not any(key.startswith(prefix) for key in target):
            prefix = ""
    else:
        raise ValueError(f"{path}: neither a flowaction checkpoint nor a 3D ResNet state dict "
                         f"(keys: {', '.join(list(state)[:6])})")
    loaded, adapted, mismatched = [], [], []
    new_state = {}
    for key, value in source.items():
        name = prefix + key
        if name not in target or not isinstance(value, torch.Tensor):
            continue
        want = target[name]
        # an RGB network's first layer meets our channels (u, v, gray) by the module's rule, even
        # when their count happens to be 3
        rgb_first = kind != "flowaction" and name == prefix + "conv1.weight" and value.dim() == 5 and \
            value.shape[1] == 3 and value.shape[0] == want.shape[0] and value.shape[2:] == want.shape[2:]
        if value.shape == want.shape and not rgb_first:
            new_state[name] = value.to(want.dtype)
            loaded.append(name)
        elif rgb_first:
            new_state[name] = _adapt_first_layer(value, input_channels(model_input)).to(want.dtype)
            adapted.append(f"{name}: 3 RGB channels -> {want.shape[1]} ({', '.join(input_channels(model_input))})")
        else:
            mismatched.append(f"{name} {tuple(value.shape)} vs {tuple(want.shape)}")
    if not new_state:
        raise ValueError(f"no weight of {path} fits this model (another depth or architecture?); "
                         f"first mismatches: {'; '.join(mismatched[:3]) or 'no common layer name'}")
    model.load_state_dict(new_state, strict=False)
    fresh = [name for name in target if name not in new_state and not name.endswith("num_batches_tracked")]
    return {"source": str(path), "kind": kind, "loaded": len(loaded), "adapted": adapted,
            "fresh": fresh, "mismatched": mismatched}


def describe(report: dict) -> str:
    """One paragraph for the log."""
    def short(names: list[str]) -> str:
        groups = sorted({name.split(".")[0] + ("." + name.split(".")[1] if name.startswith("action_net.") else "")
                         for name in names})
        return ", ".join(groups[:8]) + (" ..." if len(groups) > 8 else "")

    text = f"initialised from {report['source']} ({report['kind']}): {report['loaded']} tensors loaded"
    if report["adapted"]:
        text += f"; adapted {'; '.join(report['adapted'])}"
    if report["fresh"]:
        text += f"; left fresh: {short(report['fresh'])}"
    if report["mismatched"]:
        text += f" (shape mismatches: {'; '.join(report['mismatched'][:3])})"
    return text
