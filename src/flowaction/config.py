"""Typed run configuration: nested dataclasses, read from YAML, overridden by ``key=value``.

Every key is checked: a misspelt key raises :class:`ConfigError` naming the valid ones, and a
value of the wrong type or outside its range is rejected before any work starts.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration file or override that cannot be used."""


@dataclass
class SyntheticConfig:
    """The generated benchmark, used when ``data.cache`` is empty."""

    # motion: rigid textured shapes in global motions (8 classes); actions: a figure acting over real
    # photographs, moving camera (14); scenes: layers of real photographs in their own motions (1)
    kind: str = "motion"
    num_classes: int = 0  # the first N classes of the kind; 0 = its default (motion 8 of 10, actions all 14, scenes 1)
    size: int = 64
    num_frames: int = 16
    train_per_class: int = 60
    val_per_class: int = 10
    test_per_class: int = 20
    seed: int = 0
    workers: int = 0  # generating processes; 0 = one per core (large generations only)


@dataclass
class DataConfig:
    cache: str = ""  # a prepared cache directory; empty = generate the synthetic benchmark
    synthetic_dir: str = ""  # where a generated cache is kept; empty = <out>/data
    mix: str = ""  # pretrain-flow: more caches (comma-separated) whose training clips are added to the data's
    num_frames: int = 16
    frame_step: int = 1
    crop: int = 56
    test_clips: int = 10
    max_train_per_class: int = 0  # > 0: use only the first N training videos of each class
    # DataLoader workers; 0 loads clips in the training process (`prepare --workers 0`: one per core)
    num_workers: int = 0
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class AugmentConfig:
    brightness: float = 0.2
    contrast: float = 0.3
    gamma: float = 0.3
    hflip: bool = False
    noise_std: float = 0.05  # Gaussian noise after normalisation, in normalised units


@dataclass
class ModelConfig:
    depth: int = 18
    shortcut: str = "B"
    flow_width: int = 16
    flow_refine: bool = False  # a full-resolution level at the end of the flow network (warps, compares, corrects)
    flow_input_scale: int = 1  # the flow network sees the frames enlarged this many times (finer flow, more cost)
    flow_pyramid: bool = False  # a matching cost at every decoder level (coarse-to-fine search, larger motions)
    flow_features: bool = False  # with flow_pyramid: the search compares learned features, not pooled frames
    flow_search: int = 2  # with flow_pyramid: the largest shift searched at every level, in px of that level
    triplet_stride: int = 3
    input: str = "learned"  # one of MODEL_INPUTS
    # share of the classifier's gradient that reaches the flow network: 1 = the paper's joint training,
    # 0 = the flow network learns from the flow losses only (the classifier still sees the learned flow)
    flow_grad_scale: float = 0.1
    init: str = ""  # start from a flowaction or Hara et al.'s 3D ResNet checkpoint; what does not fit stays fresh
    # where the flow network starts: none (random, the paper's from-scratch training), a shipped
    # network (default, actions, scenes) or the path of a flownet.pt / run checkpoint
    flow_init: str = "none"
    # dis / farneback: OpenCV flow on the frames the flow network sees ("input": jittered, cropped,
    # noisy) or precomputed from the cache's clean frames ("clean")
    classical_on: str = "input"
    flow_output_init: str = "zero"  # zero (start at zero flow) | random (PyTorch's default init)


@dataclass
class LossWeights:
    """The constants of eq. 3 (``loss.classification``, ``loss.photometric``, ``loss.smoothness``),
    the Charbonnier settings and the switches of the loss variants: the ``loss`` section of a
    config and the argument of every loss function."""

    # a2 lifts the photometric term (intensities in [0, 1] give small differences) to the size of
    # the cross-entropy, so the flow network learns flow rather than whatever the classifier wants
    classification: float = 1.0
    photometric: float = 100.0
    smoothness: float = 1.0
    alpha: float = 0.45
    eps: float = 1e-3
    smooth_alpha: float = 0.45
    data_term: str = "charbonnier"  # charbonnier (the paper) | census | ssim
    edge_aware: float = 0.0  # beta of edge-aware smoothness; 0 = the paper's plain smoothness
    # 1: first differences (the paper; shrinks rotation and expansion flow), 2: second differences (zero on affine flow)
    smooth_order: int = 1
    # weight of a second photometric pair: I_{k-1} rebuilt from I_{k+1} warped by 2 O_k (constant
    # velocity over the triplet); 0 = the paper's single pair. The result is normalised by 1 + weight
    long_pair: float = 0.0
    multiscale: bool = False  # photometric loss on the flow network's coarser flows too
    occlusion: bool = False  # forward-backward occlusion masks (runs the flow network twice)


@dataclass
class CpuConfig:
    """Speed-ups of the 3D ResNet on a CPU, applied to the plain model (see ``flowaction.speedups``);
    each gives the same outputs and gradients, and ``benchmarks/bench_train.py`` measures it."""

    # skip the convolution kernel taps that only ever multiply zero padding (deep stages of short clips)
    trim_kernels: bool = True
    # training on a CPU: the stem's input gradient (the classifier's gradient into the learned
    # flows) as one forward convolution over the stride's phases instead of oneDNN's backward pass
    phase_input_grad: bool = True


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 10
    steps: int = 0  # > 0: train exactly this many optimiser steps (epochs follow); 0: optim.epochs decides
    batch_size: int = 16
    grad_clip: float = 10.0
    schedule: str = "cosine"  # cosine | constant
    warmup_epochs: float = 0.0
    flow_pretrain_epochs: int = 0  # > 0: two-stage training (flow first, then the classifier)
    flow_warmup_epochs: float = 0.0  # > 0: the first epochs train on the flow losses only, then eq. 3
    flow_lr_scale: float = 1.0  # learning rate of the flow network relative to optim.lr
    checkpoint_every: int = 1  # write last.pt every N epochs (and after the last one)
    checkpoint_steps: int = 0  # > 0: also write last.pt every N optimiser steps (resume mid-epoch)
    accumulate: int = 1  # batches whose gradients make one optimiser step (effective batch x N)
    nonfinite: str = "stop"  # a NaN / inf loss: stop (keeping the last good checkpoint) or skip the step
    # mixed precision of the networks: off, bf16, fp16 (GradScaler) or auto (bf16 where the device
    # computes it natively: CUDA with bf16, a CPU with AMX-BF16 or AVX-512-BF16; else off); losses stay fp32
    amp: str = "off"
    compile: bool = False  # torch.compile the training step (minutes of compilation first; for long runs)
    channels_last: bool = False  # the 3D ResNet in channels-last 3D memory layout (for GPUs; slower on CPU)
    adam: str = "fused"  # Adam's implementation: fused (one kernel), foreach or loop (PyTorch's reference)


@dataclass
class Config:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch intra-op threads; 0 = leave torch's default
    # keep: large CPU buffers stay in the process heap between steps (glibc; the process keeps its
    # peak memory); system: the C library's defaults
    allocator: str = "keep"
    cpu: CpuConfig = field(default_factory=CpuConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    optim: OptimConfig = field(default_factory=OptimConfig)


#: what the action network classifies (``model.input``): "learned" is the paper's joint model;
#: "truth" is an oracle on the ground-truth flow (generated data only), "one-frame" the frames model
#: on a clip of one repeated frame (it can read posture, never motion)
MODEL_INPUTS = ("learned", "learned+frames", "frames", "one-frame", "dis", "farneback", "truth")
#: the model inputs whose model classifies frames (no flow at all)
FRAME_INPUTS = ("frames", "one-frame")
#: the model inputs whose model classifies flow computed outside the network
OUTSIDE_FLOW_INPUTS = ("dis", "farneback", "truth")
#: the model inputs whose model holds a flow network (the others classify frames or OpenCV flow)
LEARNED_INPUTS = ("learned", "learned+frames")
#: the generated benchmarks (``data.synthetic.kind``), how many classes each has, and how many a run
#: takes by default (``data.synthetic.num_classes=0``): the motion world's two oscillations are opt-in
SYNTHETIC_KINDS = ("motion", "actions", "scenes")
SYNTHETIC_CLASSES = {"motion": 10, "actions": 14, "scenes": 1}
SYNTHETIC_DEFAULT_CLASSES = {"motion": 8, "actions": 14, "scenes": 1}
#: the presets packaged with flowaction (``src/flowaction/configs/<name>.yaml``): ``--config NAME``
PRESETS = ("actions", "motion", "tiny", "pretrain", "pretrain-scenes", "own-videos", "ucf101", "hmdb51", "ucf101-112", "hmdb51-112", "synthetic",
           "ablation", "actions-study")
_CHOICES = {
    "model.depth": (10, 18, 34, 50),
    "model.shortcut": ("A", "B"),
    "optim.schedule": ("cosine", "constant"),
    "model.input": MODEL_INPUTS,
    "loss.data_term": ("charbonnier", "census", "ssim"),
    "loss.smooth_order": (1, 2),
    "model.classical_on": ("input", "clean"),
    "model.flow_output_init": ("zero", "random"),
    "optim.nonfinite": ("stop", "skip"),
    "optim.amp": ("off", "bf16", "fp16", "auto"),
    "optim.adam": ("fused", "foreach", "loop"),
    "allocator": ("keep", "system"),
    "data.synthetic.kind": SYNTHETIC_KINDS,
}
_POSITIVE = {
    "data.num_frames", "data.frame_step", "data.crop", "data.test_clips", "model.flow_width", "model.flow_input_scale",
    "model.flow_search", "data.synthetic.size", "data.synthetic.num_frames",
    "model.triplet_stride", "optim.epochs", "optim.checkpoint_every", "optim.accumulate", "optim.batch_size", "optim.lr",
    "data.synthetic.train_per_class", "data.synthetic.val_per_class", "data.synthetic.test_per_class",
}


def no_flow_start(overrides: list[str], base_input: str) -> list[str]:
    """``overrides`` plus ``model.flow_init=none`` when the model they give (``model.input``, else
    ``base_input``) has no flow network and they do not set ``model.flow_init`` themselves: a
    preset that starts its flow network from shipped weights then still fits a frames or classical
    flow model, which starts fresh as every such run does."""
    given = {k.strip(): v.strip() for k, v in (o.split("=", 1) for o in overrides if "=" in o)}
    if given.get("model.input", base_input) in LEARNED_INPUTS or "model.flow_init" in given:
        return list(overrides)
    return list(overrides) + ["model.flow_init=none"]


def valid_keys(obj: Any = None, prefix: str = "") -> list[str]:
    """All dotted keys of the configuration, e.g. ``optim.lr``."""
    obj = Config() if obj is None else obj
    keys = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            keys.extend(valid_keys(value, f"{prefix}{f.name}."))
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _coerce(key: str, value: Any, current: Any) -> Any:
    """Convert ``value`` (from YAML or a command-line string) to the type of ``current``."""
    target = type(current)
    if isinstance(value, str) and target is not str:
        try:
            value = float(value) if target is float else yaml.safe_load(value)
        except ValueError:  # YAML 1.1 reads "3e-4" as text; float() does not
            pass
    if target is bool:
        if isinstance(value, bool):
            return value
    elif target is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif target is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif target is str and value is not None:
        return str(value)
    raise ConfigError(f"{key}: expected {target.__name__}, got {value!r}")


def nearest(word: str, choices: list[str] | tuple[str, ...], cutoff: float = 0.6) -> list[str]:
    """The choices nearest to ``word`` (the best and any as good within 0.05), for "did you mean"."""
    scored = sorted(((difflib.SequenceMatcher(None, word, c).ratio(), c) for c in choices), reverse=True)
    if not scored or scored[0][0] < cutoff:
        return []
    return [c for ratio, c in scored if ratio >= scored[0][0] - 0.05][:3]


def unknown_key_message(key: str) -> str:
    """``unknown config key ...`` with the nearest valid keys (not the whole list)."""
    keys = valid_keys()
    leaf = key.rsplit(".", 1)[-1]
    # the right name in the wrong section (optim.crop -> data.crop) first, then near spellings
    near = [k for k in keys if k.rsplit(".", 1)[-1] == leaf] or nearest(key, keys)
    hint = f"; did you mean {' or '.join(repr(k) for k in near)}?" if near else ""
    return f"unknown config key {key!r}{hint} (`flowaction keys` lists them all)"


def _set(cfg: Config, key: str, value: Any) -> None:
    parts = key.split(".")
    node = cfg
    for depth, part in enumerate(parts):
        names = {f.name for f in dataclasses.fields(node)}
        if part not in names:
            raise ConfigError(unknown_key_message(key))
        if depth == len(parts) - 1:
            current = getattr(node, part)
            if dataclasses.is_dataclass(current):
                raise ConfigError(f"{key} is a section; set one of its keys, e.g. {key}.{dataclasses.fields(current)[0].name}")
            setattr(node, part, _coerce(key, value, current))
        else:
            node = getattr(node, part)
            if not dataclasses.is_dataclass(node):
                raise ConfigError(unknown_key_message(key))


def flatten(mapping: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def validate(cfg: Config) -> Config:
    """Check ranges and choices; raise :class:`ConfigError` on the first problem."""
    flat = flatten(to_dict(cfg))
    for key, allowed in _CHOICES.items():
        if flat[key] not in allowed:
            raise ConfigError(f"{key} = {flat[key]!r}; choose one of {allowed}")
    for key in _POSITIVE:
        if flat[key] <= 0:
            raise ConfigError(f"{key} must be > 0, got {flat[key]}")
    if cfg.data.num_frames < 3:
        raise ConfigError("data.num_frames must be >= 3 (one triplet)")
    synthetic = cfg.data.synthetic
    if not 0 <= synthetic.num_classes <= SYNTHETIC_CLASSES[synthetic.kind]:
        raise ConfigError(f"data.synthetic.num_classes must be 0 (the default) to {SYNTHETIC_CLASSES[synthetic.kind]} for "
                          f"data.synthetic.kind={synthetic.kind}, got {synthetic.num_classes}")
    if synthetic.workers < 0:
        raise ConfigError("data.synthetic.workers must be >= 0 (0: one per core)")
    if cfg.data.crop > cfg.data.synthetic.size and not cfg.data.cache:
        raise ConfigError(f"data.crop {cfg.data.crop} exceeds data.synthetic.size {cfg.data.synthetic.size}")
    if cfg.model.flow_features and not cfg.model.flow_pyramid:
        raise ConfigError("model.flow_features=true is what the search at every level compares: set model.flow_pyramid=true")
    if cfg.model.flow_init != "none" and cfg.model.input not in LEARNED_INPUTS:
        raise ConfigError(f"model.flow_init={cfg.model.flow_init!r} needs a model with a flow network "
                          f"(model.input learned or learned+frames, not {cfg.model.input!r})")
    for key, meaning in (("optim.checkpoint_steps", "per epoch only"), ("optim.steps", "optim.epochs decides")):
        if flat[key] < 0:
            raise ConfigError(f"{key} must be >= 0 (0: {meaning})")
    if cfg.optim.flow_pretrain_epochs > 0 and cfg.model.input not in LEARNED_INPUTS:
        raise ConfigError(f"optim.flow_pretrain_epochs needs a model with a flow network "
                          f"(model.input learned or learned+frames, not {cfg.model.input!r})")
    for key in ("loss.classification", "loss.photometric", "loss.smoothness", "loss.long_pair", "augment.noise_std",
                "model.flow_grad_scale", "optim.flow_warmup_epochs", "optim.flow_lr_scale"):
        if flat[key] < 0:
            raise ConfigError(f"{key} must be >= 0")
    return cfg


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(mapping: dict, overrides: list[str] | None = None) -> Config:
    """Build a validated config from nested ``mapping`` plus ``key=value`` overrides."""
    cfg, flat = Config(), flatten(mapping or {})
    if "cpu.gemm_input_grad" in flat:  # the switch's earlier name, in the configs runs saved
        flat["cpu.phase_input_grad"] = flat.pop("cpu.gemm_input_grad")
    for key, value in flat.items():
        _set(cfg, key, value)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        _set(cfg, key.strip(), value)
    return validate(cfg)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config file (or start from defaults when ``path`` is None)."""
    if path is None:
        return from_dict({}, overrides)
    path = resolve_config_path(path)
    try:
        with open(path) as handle:
            mapping = yaml.safe_load(handle) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})".replace("\n", " ")) from None
    if not isinstance(mapping, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return from_dict(mapping, overrides)
    except ConfigError as error:  # name the file: the key may be in it, or on the command line
        raise ConfigError(f"{error} (config {path}{' and the command line' if overrides else ''})") from None


def resolve_config_path(path: str | Path) -> Path:
    """A config file's path: an existing file, or the name of a packaged preset (:data:`PRESETS`,
    with or without ``.yaml``). Anything else is a FileNotFoundError naming the presets."""
    if Path(path).is_file():
        return Path(path)
    name = Path(path).name.removesuffix(".yaml").removesuffix(".yml")
    if name == str(path).removesuffix(".yaml").removesuffix(".yml") and name in PRESETS:
        return preset_path(name)
    near = nearest(name, PRESETS)
    hint = f"; did you mean {' or '.join(near)}?" if near else ""
    raise FileNotFoundError(f"config file {path} does not exist{hint} (packaged presets: {', '.join(PRESETS)})")


def preset_path(name: str) -> Path:
    """The packaged YAML of a preset (one of :data:`PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {PRESETS}")
    return Path(str(resources.files("flowaction") / "configs" / f"{name}.yaml"))


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the fully resolved config as YAML."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        yaml.safe_dump(to_dict(cfg), handle, sort_keys=False)
    tmp.replace(path)
