"""Flow networks for the flow benchmarks: a shipped name (``default``, ``actions``) or a file
(``flownet.pt`` from ``pretrain-flow``, or a run checkpoint), wrapped in a joint model whose
``flows`` path does the same normalisation and triplet grouping as training."""
from __future__ import annotations

from pathlib import Path

import torch

from flowaction.config import ModelConfig
from flowaction.models.build import build_joint_model
from flowaction.models.weights import SEARCH_KEYS, SHIPPED_FLOW, load_flow_weights, shipped_flow_weights


def flow_shape(weights: str = "default") -> dict[str, int | bool]:
    """The network a weights file holds: ``flow_width``, ``flow_refine``, ``flow_pyramid``,
    ``flow_features``, ``flow_search`` (the ``model.*`` keys a config must set to load it) and
    ``flow_input_scale``, the scale a run checkpoint's config trained it at (1 for a ``flownet.pt``,
    whose weights do not depend on it)."""
    path = shipped_flow_weights(weights) if weights in SHIPPED_FLOW else Path(weights)
    state = torch.load(path, weights_only=True)
    model_cfg = state.get("config", {}).get("model", {})
    return {"flow_width": int(state.get("flow_width") or model_cfg.get("flow_width", ModelConfig.flow_width)),
            "flow_refine": bool(state.get("flow_refine", model_cfg.get("flow_refine", False))),
            "flow_pyramid": bool(state.get("flow_pyramid", model_cfg.get("flow_pyramid", False))),
            **{key: type(default)(state.get(key, model_cfg.get(key, default))) for key, default in SEARCH_KEYS.items()},
            "flow_input_scale": int(model_cfg.get("flow_input_scale", 1))}


def flow_model(weights: str = "default") -> torch.nn.Module:
    """A joint model whose flow network is ``weights`` (only its ``flows`` path is used)."""
    model = build_joint_model(num_classes=2, depth=10, triplet_stride=1, **flow_shape(weights))
    load_flow_weights(model.flow_net, weights)
    return model.eval()


def method_name(weights: str) -> str:
    """``learned`` for the default network, ``learned-<name>`` for another: a file's stem, or for
    ``pretrain-flow``'s ``OUT/flownet.pt`` the run folder's name."""
    if weights == "default":
        return "learned"
    path = Path(weights)
    return f"learned-{path.parent.name if path.stem == 'flownet' and path.parent.name else path.stem}"


def flow_models(spec: str) -> dict[str, torch.nn.Module]:
    """The networks of a comma-separated ``--flow-weights`` list, by :func:`method_name`; two that
    would get the same name (and so share a row of the tables) are refused, naming both."""
    named: dict[str, str] = {}
    for weights in (w for w in spec.split(",") if w):
        name = method_name(weights)
        if name in named:
            raise SystemExit(f"--flow-weights: {named[name]} and {weights} would both be reported as {name}; "
                             "rename one of the files")
        named[name] = weights
    return {name: flow_model(weights) for name, weights in named.items()}
