"""The one place that turns a config, or a checkpoint, into a model.

Every command that needs a model (train, eval, predict, stream, export, flow, the demo and the
study) builds it here, so a checkpoint needs nothing but itself to be used.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from torch import nn

from flowaction.checkpoint import load_checkpoint, load_weights
from flowaction.config import FRAME_INPUTS, MODEL_INPUTS, OUTSIDE_FLOW_INPUTS, Config, ModelConfig, from_dict
from flowaction.models.flownet import FlowNet
from flowaction.models.joint import FrameModel, JointModel, PrecomputedFlowModel
from flowaction.models.resnet3d import resnet3d

ActionModel = JointModel | FrameModel | PrecomputedFlowModel


def build_joint_model(
    num_classes: int,
    depth: int = 18,
    shortcut: str = "B",
    flow_width: int = 16,
    triplet_stride: int = 3,
    input: str = "learned",
    zero_flow_output: bool = True,
    flow_refine: bool = False,
    flow_pyramid: bool = False,
    flow_input_scale: int = 1,
    flow_features: bool = False,
    flow_search: int = 2,
) -> ActionModel:
    """The model for an action-network ``input`` (one of ``MODEL_INPUTS``; "learned" is the paper's):
    a :class:`JointModel` for learned inputs, a :class:`FrameModel` or a :class:`PrecomputedFlowModel`."""
    if input not in MODEL_INPUTS:
        raise ValueError(f"unknown model input {input!r}; choose one of {MODEL_INPUTS}")
    if input in FRAME_INPUTS:
        return FrameModel(resnet3d(depth, in_channels=1, num_classes=num_classes, shortcut=shortcut),
                          still=input == "one-frame")
    if input in OUTSIDE_FLOW_INPUTS:
        return PrecomputedFlowModel(
            resnet3d(depth, in_channels=2, num_classes=num_classes, shortcut=shortcut), triplet_stride, input
        )
    fuse = input == "learned+frames"
    return JointModel(
        FlowNet(width=flow_width, zero_output=zero_flow_output, refine=flow_refine, pyramid=flow_pyramid,
                input_scale=flow_input_scale, features=flow_features, search_radius=flow_search),
        resnet3d(depth, in_channels=3 if fuse else 2, num_classes=num_classes, shortcut=shortcut),
        triplet_stride=triplet_stride,
        fuse_frames=fuse,
    )


def build_model(cfg: Config, num_classes: int) -> ActionModel:
    """The plain model ``cfg.model`` describes, freshly initialised."""
    m = cfg.model
    return build_joint_model(num_classes, m.depth, m.shortcut, m.flow_width, m.triplet_stride, m.input,
                             zero_flow_output=m.flow_output_init == "zero", flow_refine=m.flow_refine,
                             flow_pyramid=m.flow_pyramid, flow_input_scale=m.flow_input_scale,
                             flow_features=m.flow_features, flow_search=m.flow_search)


def flow_network(m: ModelConfig) -> FlowNet:
    """The flow network of the model ``m`` describes (``model.flow_*``), freshly initialised."""
    return FlowNet(width=m.flow_width, zero_output=m.flow_output_init == "zero", refine=m.flow_refine,
                   pyramid=m.flow_pyramid, input_scale=m.flow_input_scale, features=m.flow_features,
                   search_radius=m.flow_search)


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint: the network (on the CPU, in eval mode), its config, its
    classes and the whole checkpoint dict (``state``: frame size, epoch, best, ...)."""

    model: ActionModel
    cfg: Config
    classes: list[str]
    state: dict[str, Any]
    source: str = ""  # the file it came from


def load_model_checkpoint(path: str | os.PathLike) -> LoadedModel:
    """Rebuild the model of a flowaction checkpoint from the file alone (no pickled code runs).

    Raises:
        FileNotFoundError: no file; ValueError: not a model checkpoint, or weights that do not fit.
    """
    state = load_checkpoint(path)
    if "model" not in state or not state.get("config"):
        raise ValueError(f"{path} is not a model checkpoint (a flow-network file? use it as model.flow_init)")
    cfg = from_dict(state["config"])
    model = build_model(cfg, len(state["classes"]))
    load_weights(model, state["model"], path)
    model.eval()
    return LoadedModel(model, cfg, list(state["classes"]), state, str(path))


def count_parameters(model: nn.Module) -> int:
    """Learnable and fixed parameters of ``model`` (buffers not counted)."""
    return sum(p.numel() for p in model.parameters())
