"""Parallel strategy calculator: how a model's training step spreads over a GPU cluster.

The module answers four questions for a model, a cluster and a parallel
configuration (tp, pp, dp, ep):

1. How many parameters does the model have, in total and per token?
2. How many bytes does each GPU hold (weights, gradients, optimizer states,
   activations, logits)?
3. How many bytes does each GPU send per training step, per kind of
   parallelism?
4. How long does a step take, estimated from FLOPs, the pipeline bubble and
   exposed communication?

It then enumerates the valid configurations for a cluster and ranks them by
estimated step time.

Units everywhere: bytes, FLOP, FLOP/s, bytes/s (per GPU, per direction) and
seconds. Messages print GB as 10**9 bytes.

Rank layout. Ranks are numbered with tp fastest, then dp, then pp::

    rank = tp_rank + tp * (dp_rank + dp * pp_rank)

Expert parallelism is carved out of the data-parallel dimension: the dp ranks
of one pipeline stage form dp / ep groups of ep consecutive dp ranks, each
group holding all experts once (each rank 1/ep of them). So
``tp * pp * dp == num_gpus``, ``ep`` divides ``dp``, and expert weights are
data-parallel over ``dp / ep`` ranks while all other weights are
data-parallel over ``dp`` ranks. Expert weights are also split over the tp
ranks (expert tensor parallelism equals tp).
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Iterator, NamedTuple

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

logger = logging.getLogger(__name__)

DATASETS_DIR = Path(__file__).resolve().parents[1] / "datasets"
"""Folder holding ``models/*.toml`` and ``hardware/*.toml``."""

GB = 1e9
"""Bytes in one GB, as used in messages (decimal, like GPU datasheets)."""

RECOMPUTE_MODES = ("none", "selective", "full")
PRECISIONS = ("bf16", "fp16", "fp32")


# ---------------------------------------------------------------------------
# Spec types
# ---------------------------------------------------------------------------


class ModelSpec(NamedTuple):
    """Hyperparameters of a transformer, as read from ``datasets/models``.

    ``num_layers`` counts every transformer block (encoder plus decoder for
    an encoder-decoder model). A layer is an MoE layer when ``num_experts >
    0``, its index is at least ``first_dense_layers`` and
    ``(index - first_dense_layers) % moe_layer_interval == 0``. The last
    ``num_cross_attention_layers`` layers carry a second (cross-)attention
    block of the same shape as self-attention.

    Attention widths: queries and keys use ``num_attention_heads *
    head_dim`` (keys ``num_kv_heads * head_dim``), values ``num_kv_heads *
    v_head_dim`` and the output projection reads ``num_attention_heads *
    v_head_dim``. With ``attention == "mla"`` (DeepSeek's multi-head latent
    attention) queries go through a rank-``q_lora_rank`` bottleneck and keys
    and values through a shared rank-``kv_lora_rank`` latent plus a
    ``qk_rope_head_dim``-wide rotary key shared by all heads.
    """

    name: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_hidden_size: int
    vocab_size: int
    gated_mlp: bool = False
    tie_embeddings: bool = False
    position_embeddings: int = 0
    linear_bias: bool = False
    norm: str = "rmsnorm"
    attention: str = "gqa"
    v_head_dim: int = 0
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    num_experts: int = 0
    num_shared_experts: int = 0
    top_k: int = 0
    expert_ffn_hidden_size: int = 0
    first_dense_layers: int = 0
    moe_layer_interval: int = 1
    num_cross_attention_layers: int = 0
    num_mtp_modules: int = 0
    published_total_params: float = 0.0
    published_active_params: float = 0.0
    source: str = ""

    @property
    def is_moe(self) -> bool:
        """Whether any layer routes tokens to experts."""
        return self.num_experts > 0


class GPUSpec(NamedTuple):
    """One GPU model, as read from ``datasets/hardware``.

    ``memory_bytes`` is the nominal capacity in bytes. ``bf16_flops`` is the
    dense (no sparsity) bf16 tensor-core peak in FLOP/s. ``hbm_bandwidth``,
    ``nvlink_bandwidth`` and ``internode_bandwidth`` are bytes/s per GPU;
    the two link bandwidths are per direction.
    """

    name: str
    memory_bytes: int
    bf16_flops: float
    hbm_bandwidth: float
    nvlink_bandwidth: float
    internode_bandwidth: float
    source: str = ""


class ClusterSpec(NamedTuple):
    """``num_gpus`` GPUs of one kind in nodes of ``gpus_per_node``, NVLink inside a node."""

    gpu: GPUSpec
    num_gpus: int
    gpus_per_node: int


class ParallelConfig(NamedTuple):
    """Degrees of parallelism and the pipeline schedule.

    ``tp``: tensor-parallel degree, ``pp``: pipeline stages (P), ``dp``:
    data-parallel degree, ``ep``: expert-parallel degree carved out of
    ``dp``. ``num_chunks`` (v) is the number of model chunks per pipeline
    rank: 1 is plain 1F1B, more is interleaved 1F1B.
    """

    tp: int
    pp: int
    dp: int
    ep: int = 1
    num_chunks: int = 1


class TrainingSettings(NamedTuple):
    """Settings of one training step: batch shape, precision, sharding and recomputation.

    ``seq_len`` tokens per sequence; ``global_batch`` sequences per step;
    ``micro_batch`` sequences per microbatch per data-parallel rank, so the
    pipeline runs ``global_batch / (dp * micro_batch)`` microbatches.
    ``precision``: "bf16" or "fp16" (mixed precision with Adam: 2 bytes of
    weights, 2 of gradients and 12 of fp32 master weights and moments per
    parameter) or "fp32" (4 + 4 + 8). ``zero_stage`` 0-3 shards optimizer
    states (1), gradients (2) and weights (3) over the data-parallel ranks.
    ``sequence_parallel`` splits the layer-norm and dropout activations over
    the tp ranks. ``recompute``: "none", "selective" (attention scores are
    recomputed) or "full" (only each layer's input is kept).
    """

    seq_len: int
    global_batch: int
    micro_batch: int = 1
    precision: str = "bf16"
    zero_stage: int = 1
    sequence_parallel: bool = True
    recompute: str = "selective"


class StepTimeAssumptions(NamedTuple):
    """Assumptions of the step-time estimate, each a fraction in [0, 1].

    ``mfu``: share of the dense bf16 peak that the step's computation
    reaches while it computes (the bubble and exposed communication are
    added on top, so this is higher than an end-to-end MFU).
    ``*_overlap``: share of each kind of communication hidden behind
    computation. ``attention_flops``: count the attention score and value
    matmuls (6 * s * a * (head_dim + v_head_dim) FLOP per token per layer,
    no causal discount) on top of 6 * parameters * tokens.
    """

    mfu: float = 0.5
    tp_overlap: float = 0.0
    pp_overlap: float = 0.0
    dp_overlap: float = 0.5
    ep_overlap: float = 0.0
    attention_flops: bool = True


class ParamCounts(NamedTuple):
    """Parameter counts of a model (numbers of parameters, not bytes).

    ``total``: every parameter, including the input embedding, the output
    head (once when tied) and the final norm; the MTP module only when
    counted with ``include_mtp=True``. ``active``: parameters one token
    uses, counted the same way (embedding and head included) with only
    ``top_k`` routed experts per MoE layer. ``embedding``: input embedding
    plus learned position embedding. ``output_head``: 0 when tied.
    ``expert``: routed expert weights in all layers (shared experts are not
    included). ``mtp``: the MTP modules, reported whether or not counted.
    """

    total: int
    active: int
    embedding: int
    output_head: int
    expert: int
    mtp: int


class LayerParams(NamedTuple):
    """Parameters of one transformer layer.

    ``dense``: parameters every EP rank stores (attention, norms, router,
    dense MLP, shared experts). ``expert``: routed expert weights, split
    over the EP ranks. ``active``: parameters one token uses (``dense`` plus
    ``top_k`` routed experts).
    """

    dense: int
    expert: int
    active: int


class ModelStateBytes(NamedTuple):
    """Bytes of weights, gradients and optimizer states on one GPU."""

    weights: float
    gradients: float
    optimizer_states: float


class MemoryBreakdown(NamedTuple):
    """Bytes one GPU of pipeline rank ``pp_rank`` needs at its peak."""

    pp_rank: int
    weights: float
    gradients: float
    optimizer_states: float
    activations: float
    logits: float

    @property
    def total(self) -> float:
        """Sum of all parts, bytes."""
        return self.weights + self.gradients + self.optimizer_states + self.activations + self.logits


class CommVolume(NamedTuple):
    """Bytes one GPU sends per training step, per kind of parallelism."""

    tp: float
    pp: float
    dp: float
    ep: float

    @property
    def total(self) -> float:
        """Sum of all kinds, bytes."""
        return self.tp + self.pp + self.dp + self.ep


class StepTimeEstimate(NamedTuple):
    """Estimated seconds of one training step, by cause.

    ``compute``: FLOPs at the assumed utilisation; ``bubble``: pipeline idle
    time; ``tp_comm`` .. ``ep_comm``: communication not hidden behind
    computation.
    """

    compute: float
    bubble: float
    tp_comm: float
    pp_comm: float
    dp_comm: float
    ep_comm: float

    @property
    def total(self) -> float:
        """Step time, seconds."""
        return self.compute + self.bubble + self.tp_comm + self.pp_comm + self.dp_comm + self.ep_comm


class RuleFailure(NamedTuple):
    """One validity rule a configuration breaks: its name and a readable reason."""

    rule: str
    reason: str


class RankedConfig(NamedTuple):
    """A valid configuration with its estimated step time, peak memory and traffic."""

    config: ParallelConfig
    step_time: StepTimeEstimate
    memory: MemoryBreakdown
    comm: CommVolume


RULES = (
    "positive_degrees",
    "world_size",
    "tp_within_node",
    "tp_divides_heads",
    "tp_divides_ffn",
    "pp_divides_layers",
    "ep_needs_experts",
    "ep_divides_dp",
    "ep_divides_experts",
    "batch_divisible",
    "interleaving",
    "memory",
)
"""Names of the validity rules, in the order ``validate_config`` checks them."""


# ---------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------

_MODEL_REQUIRED = {
    "name": str,
    "num_layers": int,
    "hidden_size": int,
    "num_attention_heads": int,
    "num_kv_heads": int,
    "head_dim": int,
    "ffn_hidden_size": int,
    "vocab_size": int,
}
_GPU_REQUIRED = {
    "name": str,
    "memory_bytes": int,
    "bf16_flops": float,
    "hbm_bandwidth": float,
    "nvlink_bandwidth": float,
    "internode_bandwidth": float,
}
_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _field_types(spec_type: type) -> dict[str, type]:
    """Map each field of a spec NamedTuple to the Python type its TOML value must have."""
    types = {}
    for field, default in spec_type._field_defaults.items():
        types[field] = float if isinstance(default, float) else type(default)
    return types


def _check_value(path: Path, field: str, value: object, expected: type) -> object:
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, bool):
        ok = False
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ValueError(
            f"{path}: field {field!r} must be {_TYPE_NAMES[expected]}, got {value!r} "
            f"({type(value).__name__})"
        )
    return value


def _read_spec(path: Path, spec_type: type, required: dict[str, type]) -> dict[str, object]:
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path}: invalid TOML ({error})") from None
    types = {**_field_types(spec_type), **required}
    unknown = sorted(set(raw) - set(types))
    if unknown:
        raise ValueError(
            f"{path}: unknown field {unknown[0]!r}; expected one of {', '.join(sorted(types))}"
        )
    values = {}
    for field, value in raw.items():
        values[field] = _check_value(path, field, value, types[field])
    missing = [field for field in required if field not in raw]
    if missing:
        raise ValueError(
            f"{path}: missing field {missing[0]!r} ({_TYPE_NAMES[required[missing[0]]]})"
        )
    for field, expected in required.items():
        if expected in (int, float) and values[field] <= 0:
            raise ValueError(f"{path}: field {field!r} must be positive, got {values[field]!r}")
    return values


def _resolve(name_or_path: str | Path, folder: str) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.parent != Path("."):
        if not candidate.is_file():
            raise FileNotFoundError(f"spec file not found: {candidate}")
        return candidate
    path = DATASETS_DIR / folder / f"{str(name_or_path).lower()}.toml"
    if not path.is_file():
        known = ", ".join(available_specs(folder))
        raise FileNotFoundError(f"no {folder} spec named {name_or_path!r}; known: {known}")
    return path


def available_specs(folder: str) -> list[str]:
    """Return the names of the specs shipped in ``datasets/<folder>`` ("models" or "hardware")."""
    return sorted(path.stem for path in (DATASETS_DIR / folder).glob("*.toml"))


def load_model(name_or_path: str | Path) -> ModelSpec:
    """Load a model spec by name (``datasets/models/<name>.toml``) or from a TOML path.

    Raises FileNotFoundError for an unknown name or path and ValueError,
    naming the file, the field and the expected type, for a malformed file.
    """
    path = _resolve(name_or_path, "models")
    values = _read_spec(path, ModelSpec, _MODEL_REQUIRED)
    if not values.get("v_head_dim"):
        values["v_head_dim"] = values["head_dim"]
    model = ModelSpec(**values)
    _check_model(path, model)
    return model


def _check_model(path: Path, model: ModelSpec) -> None:
    if model.norm not in ("layernorm", "rmsnorm"):
        raise ValueError(f"{path}: field 'norm' must be \"layernorm\" or \"rmsnorm\", got {model.norm!r}")
    if model.attention not in ("gqa", "mla"):
        raise ValueError(f"{path}: field 'attention' must be \"gqa\" or \"mla\", got {model.attention!r}")
    if model.num_attention_heads % model.num_kv_heads:
        raise ValueError(
            f"{path}: field 'num_kv_heads' ({model.num_kv_heads}) must divide "
            f"num_attention_heads ({model.num_attention_heads})"
        )
    if model.num_experts and not (1 <= model.top_k <= model.num_experts and model.expert_ffn_hidden_size > 0):
        raise ValueError(
            f"{path}: an MoE model needs 1 <= top_k <= num_experts and expert_ffn_hidden_size > 0, "
            f"got top_k={model.top_k}, num_experts={model.num_experts}, "
            f"expert_ffn_hidden_size={model.expert_ffn_hidden_size}"
        )
    if model.moe_layer_interval < 1:
        raise ValueError(f"{path}: field 'moe_layer_interval' must be >= 1, got {model.moe_layer_interval}")


def load_gpu(name_or_path: str | Path) -> GPUSpec:
    """Load a GPU spec by name (``datasets/hardware/<name>.toml``) or from a TOML path.

    Raises FileNotFoundError for an unknown name or path and ValueError for
    a malformed file.
    """
    path = _resolve(name_or_path, "hardware")
    return GPUSpec(**_read_spec(path, GPUSpec, _GPU_REQUIRED))


def make_cluster(gpu: GPUSpec, num_gpus: int, gpus_per_node: int) -> ClusterSpec:
    """Build a cluster of whole nodes.

    Raises ValueError unless ``num_gpus`` is a positive multiple of
    ``gpus_per_node``.
    """
    if gpus_per_node < 1:
        raise ValueError(f"gpus_per_node must be >= 1, got {gpus_per_node}")
    if num_gpus < 1 or num_gpus % gpus_per_node:
        raise ValueError(
            f"num_gpus={num_gpus} is not a whole number of nodes of {gpus_per_node} GPUs; "
            f"use a positive multiple of {gpus_per_node}, or set gpus_per_node to the GPUs of one node"
        )
    return ClusterSpec(gpu, num_gpus, gpus_per_node)


# ---------------------------------------------------------------------------
# Parameter counts
# ---------------------------------------------------------------------------


def is_moe_layer(model: ModelSpec, layer: int) -> bool:
    """Return whether layer ``layer`` (0-based) routes tokens to experts (see ModelSpec)."""
    if not model.is_moe or layer < model.first_dense_layers:
        return False
    return (layer - model.first_dense_layers) % model.moe_layer_interval == 0


def has_cross_attention(model: ModelSpec, layer: int) -> bool:
    """Return whether layer ``layer`` (0-based) is one of the last ``num_cross_attention_layers``."""
    return layer >= model.num_layers - model.num_cross_attention_layers


def attention_params(model: ModelSpec) -> int:
    """Return the parameters of one attention block (projections, their biases, MLA's norms).

    GQA (covers MHA and MQA), with a = heads, k = key/value heads, d =
    head_dim, dv = v_head_dim, h = hidden: Q h*a*d, K h*k*d, V h*k*dv,
    output a*dv*h, plus biases a*d + k*d + k*dv + h with ``linear_bias``.

    MLA, with r_q = q_lora_rank, r_kv = kv_lora_rank, d_r = qk_rope_head_dim:
    query down h*r_q and its RMSNorm r_q, query up r_q*a*d (h*a*d when r_q
    is 0); key/value down h*(r_kv + d_r) and its RMSNorm r_kv; key/value up
    r_kv*a*((d - d_r) + dv); output a*dv*h.
    """
    # Hint: the layer norms around the block are counted by layer_params, not here.
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")


def mlp_params(model: ModelSpec, ffn_hidden_size: int) -> int:
    """Return the parameters of one MLP (or one expert) of width ``ffn_hidden_size`` = f.

    Gated (SwiGLU/GeGLU): 3*h*f, else 2*h*f. With ``linear_bias`` add f per
    up-projection (2f gated, f otherwise) and h for the down-projection.
    """
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")


def norm_params(model: ModelSpec) -> int:
    """Return the parameters of one norm: 2h for LayerNorm (scale and bias), h for RMSNorm."""
    return 2 * model.hidden_size if model.norm == "layernorm" else model.hidden_size


def layer_params(model: ModelSpec, layer: int) -> LayerParams:
    """Return the parameters of layer ``layer`` (0-based), split as LayerParams describes.

    A layer has an attention block and an MLP block, each after a norm; a
    cross-attention layer adds one more attention block and norm. A dense
    layer's MLP has width ``ffn_hidden_size``. An MoE layer instead has a
    router (h * num_experts weights, no bias), ``num_shared_experts`` shared
    experts and ``num_experts`` routed experts, each an MLP of width
    ``expert_ffn_hidden_size``. A token uses ``top_k`` routed experts and all
    shared experts.
    """
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")


def mtp_params(model: ModelSpec) -> LayerParams:
    """Return the parameters of the multi-token prediction modules (DeepSeek-V3 style).

    Each module has two RMSNorms (h each) on its inputs, a projection 2h*h
    from the concatenated inputs, one transformer layer shaped like the
    model's last layer and a final RMSNorm h. It shares the embedding and
    the output head with the main model. Returns zeros when
    ``num_mtp_modules`` is 0.
    """
    last = layer_params(model, model.num_layers - 1)
    extra = 2 * model.hidden_size * model.hidden_size + 3 * model.hidden_size
    n = model.num_mtp_modules
    return LayerParams(dense=n * (last.dense + extra), expert=n * last.expert, active=n * (last.active + extra))


def count_parameters(model: ModelSpec, include_mtp: bool = False) -> ParamCounts:
    """Count the model's parameters, total and active per token (see ParamCounts).

    The embedding is ``vocab_size * hidden_size`` plus ``position_embeddings
    * hidden_size``; the output head is another ``vocab_size * hidden_size``
    unless ``tie_embeddings``; one final norm follows the last layer.
    """
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")


# ---------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------

_STATE_BYTES = {"bf16": (2, 2, 12), "fp16": (2, 2, 12), "fp32": (4, 4, 8)}


def state_bytes_per_param(precision: str) -> tuple[int, int, int]:
    """Return (weight, gradient, optimizer) bytes per parameter for Adam in ``precision``.

    "bf16"/"fp16" mixed precision: 2, 2 and 12 (fp32 master weights, first
    and second moments); "fp32": 4, 4 and 8.
    """
    if precision not in _STATE_BYTES:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return _STATE_BYTES[precision]


def model_state_bytes(num_params: float, dp: int, zero_stage: int, precision: str = "bf16") -> ModelStateBytes:
    """Return the bytes of weights, gradients and optimizer states for ``num_params`` parameters.

    ``num_params`` are the parameters this GPU is responsible for before
    ZeRO sharding; ``dp`` is the size of their data-parallel group. ZeRO
    stage 1 divides the optimizer states by ``dp``, stage 2 also the
    gradients, stage 3 also the weights (Rajbhandari et al. 2020). Bytes per
    parameter come from ``state_bytes_per_param(precision)``.
    """
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage}")
    if dp < 1:
        raise ValueError(f"dp must be >= 1, got {dp}")
    weight_bytes, gradient_bytes, optimizer_bytes = state_bytes_per_param(precision)
    # Hint: each state is divided by dp once zero_stage reaches its stage (3, 2, 1).
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")


def layer_activation_bytes(model: ModelSpec, settings: TrainingSettings, tp: int, layer: int) -> float:
    """Return the bytes of activations one microbatch leaves on one GPU in layer ``layer``.

    These are the tensors kept from the forward pass for the backward pass,
    after Korthikanti et al. 2022, "Reducing Activation Recomputation in
    Large Transformer Models", section 4: 16-bit tensors (2 bytes per
    element) and 1-byte dropout masks, s = seq_len, b = micro_batch,
    h = hidden_size, a = num_attention_heads, t = tp.

    Replicated part R, on every tp rank unless ``sequence_parallel``. Each
    attention block keeps its norm input 2sbh, QKV input 2sbh and dropout
    mask sbh. Each MLP block keeps its norm input 2sbh, MLP input 2sbh and
    dropout mask sbh. A GPT layer has R = 10sbh.

    Tensor-parallel part T (divided by t), per attention block: Q and K
    2sb(q_w + k_w), V 2sb*v_w, output-projection input 2sb*o_w with q_w =
    a*head_dim, k_w = kv_heads*head_dim, v_w = kv_heads*v_head_dim, o_w =
    a*v_head_dim (MLA: kv_heads = a), plus scores 5as^2b (softmax output
    2as^2b, its dropout mask as^2b, dropout output 2as^2b); per MLP block:
    2sb*f*u for the up-projection outputs and 2sb*f for the down-projection
    input, with u = 2 for a gated MLP and 1 otherwise and f the MLP width a
    token passes through (``ffn_hidden_size``; in an MoE layer ``top_k *
    expert_ffn_hidden_size`` plus ``num_shared_experts *
    expert_ffn_hidden_size``). A GPT layer (f = 4h, not gated, MHA) has
    T = 24sbh + 5as^2b.

    A cross-attention layer has two attention blocks. Result: R + T/t, or
    (R + T)/t with ``sequence_parallel``. "selective" recomputation drops the
    5as^2b terms; "full" keeps only the layer input, 2sbh (2sbh/t with
    ``sequence_parallel``). So a GPT layer gives sbh(34 + 5as/h) for t = 1,
    sbh(10 + 24/t + 5as/(ht)) with tp, sbh/t (34 + 5as/h) with tp and
    sequence parallelism.

    NOTE: for MLA this counts the decompressed per-head Q, K and V but not
    the low-rank latents, and for MoE layers not the router's outputs.
    """
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")


def logits_bytes(model: ModelSpec, settings: TrainingSettings, tp: int) -> float:
    """Return the bytes of the output logits of one microbatch on a last-stage GPU.

    Convention: the vocabulary is split over the tp ranks, and each logit is
    kept as the bf16 output of the output layer (2 bytes) plus the fp32 copy
    the cross-entropy keeps for its backward pass (4 bytes):
    ``seq_len * micro_batch * vocab_size / tp * 6``. Each MTP module adds
    the same again. The last stage runs each microbatch's backward right
    after its forward, so one microbatch's logits are alive at a time.
    """
    per_head = settings.seq_len * settings.micro_batch * model.vocab_size / tp * 6
    return per_head * (1 + model.num_mtp_modules)


def in_flight_microbatches(num_stages: int, num_microbatches: int, pp_rank: int, num_chunks: int = 1) -> float:
    """Return how many microbatches' activations pipeline rank ``pp_rank`` keeps at its peak.

    1F1B (``num_chunks`` = 1): min(P - pp_rank, M), so the first stage keeps P.
    Interleaved 1F1B with v chunks (Megatron's warmup): the rank keeps
    min(2(P - pp_rank - 1) + (v - 1)P + 1, vM) chunk-microbatches of 1/v of
    its layers each, so the result is that count divided by v.
    """
    P, M, v = num_stages, num_microbatches, num_chunks
    if v == 1:
        return float(min(P - pp_rank, M))
    return min(2 * (P - pp_rank - 1) + (v - 1) * P + 1, v * M) / v


def num_microbatches(config: ParallelConfig, settings: TrainingSettings) -> int:
    """Return M = global_batch / (dp * micro_batch), rounded down (validate_config checks divisibility)."""
    return settings.global_batch // (config.dp * settings.micro_batch)


def stage_layers(model: ModelSpec, config: ParallelConfig, pp_rank: int) -> list[int]:
    """Return the indices of the layers on pipeline rank ``pp_rank``.

    Layers are cut into ``pp * num_chunks`` equal consecutive chunks, and
    the last chunk takes the remainder when the division is uneven. Virtual
    stage ``chunk * pp + pp_rank`` belongs to rank ``pp_rank``.
    """
    num_virtual = config.pp * config.num_chunks
    per_chunk = model.num_layers // num_virtual
    layers = []
    for chunk in range(config.num_chunks):
        virtual = chunk * config.pp + pp_rank
        start = virtual * per_chunk
        end = model.num_layers if virtual == num_virtual - 1 else start + per_chunk
        layers.extend(range(start, end))
    return layers


def stage_params(model: ModelSpec, config: ParallelConfig, pp_rank: int) -> LayerParams:
    """Return the parameters one GPU of rank ``pp_rank`` stores before ZeRO sharding.

    ``dense`` counts the stage's non-expert layer parameters, plus the
    embedding on rank 0 and the output head, final norm and MTP modules on
    the last rank, all divided by tp. A tied output head is a second copy of
    the embedding on the last rank when pp > 1. ``expert`` counts the
    stage's routed experts divided by tp * ep. ``active`` is unused (0).
    """
    table = _layer_table(model)
    dense = sum(table[layer].dense for layer in stage_layers(model, config, pp_rank))
    expert = sum(table[layer].expert for layer in stage_layers(model, config, pp_rank))
    embedding = (model.vocab_size + model.position_embeddings) * model.hidden_size
    head = model.vocab_size * model.hidden_size
    if pp_rank == 0:
        dense += embedding
    if pp_rank == config.pp - 1:
        if not model.tie_embeddings or config.pp > 1:
            dense += head
        mtp = mtp_params(model)
        dense += norm_params(model) + mtp.dense
        expert += mtp.expert
    return LayerParams(dense=dense / config.tp, expert=expert / (config.tp * config.ep), active=0)


@functools.lru_cache(maxsize=64)
def _layer_table(model: ModelSpec) -> tuple[LayerParams, ...]:
    return tuple(layer_params(model, layer) for layer in range(model.num_layers))


def stage_memory(model: ModelSpec, config: ParallelConfig, settings: TrainingSettings, pp_rank: int) -> MemoryBreakdown:
    """Return the peak bytes one GPU of pipeline rank ``pp_rank`` needs.

    Weights, gradients and optimizer states: ``model_state_bytes`` of
    ``stage_params``, the dense part with data-parallel group ``dp`` and the
    expert part with group ``dp / ep``, summed.

    Activations: the sum of ``layer_activation_bytes`` over the rank's
    layers (``stage_layers``), times ``in_flight_microbatches``. With
    "full" recomputation add the largest single layer's activations as if
    nothing were recomputed (the layer being recomputed in the backward
    pass). Each MTP module on the last rank adds its layer's activations
    once per in-flight microbatch.

    Logits: ``logits_bytes`` on the last rank, 0 elsewhere.
    """
    # Hint: in_flight_microbatches needs num_microbatches(config, settings).
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")


def memory_per_gpu(model: ModelSpec, config: ParallelConfig, settings: TrainingSettings) -> MemoryBreakdown:
    """Return the breakdown of the pipeline rank that needs the most memory (lowest rank on ties)."""
    return max(
        (stage_memory(model, config, settings, rank) for rank in range(config.pp)),
        key=lambda breakdown: (breakdown.total, -breakdown.pp_rank),
    )


# ---------------------------------------------------------------------------
# Communication
# ---------------------------------------------------------------------------


def ring_all_reduce_bytes(size_bytes: float, group_size: int) -> float:
    """Return the bytes each rank sends in a ring all-reduce of ``size_bytes``: 2(n-1)/n * S."""
    return 2 * (group_size - 1) / group_size * size_bytes if group_size > 1 else 0.0


def all_to_all_bytes(size_bytes: float, group_size: int) -> float:
    """Return the bytes each rank sends in an all-to-all of its ``size_bytes``: (n-1)/n * S."""
    return (group_size - 1) / group_size * size_bytes if group_size > 1 else 0.0


def _group_within_node(span: int, cluster: ClusterSpec) -> bool:
    return span <= cluster.gpus_per_node


def link_bandwidths(cluster: ClusterSpec, config: ParallelConfig) -> dict[str, float]:
    """Return the bytes/s each kind of traffic gets, per GPU and direction.

    With the rank layout of this module a group stays inside one node when
    the ranks it spans fit in a node: tp always (tp divides
    gpus_per_node), dp when tp * dp <= gpus_per_node, ep when tp * ep <=
    gpus_per_node, pp when tp * dp * pp <= gpus_per_node. Inside a node the
    traffic uses NVLink, otherwise the inter-node network.
    """
    gpu = cluster.gpu
    spans = {
        "tp": config.tp,
        "dp": config.tp * config.dp,
        "ep": config.tp * config.ep,
        "pp": config.tp * config.dp * config.pp,
    }
    return {
        kind: gpu.nvlink_bandwidth if _group_within_node(span, cluster) else gpu.internode_bandwidth
        for kind, span in spans.items()
    }


def communication_per_step(model: ModelSpec, config: ParallelConfig, settings: TrainingSettings) -> CommVolume:
    """Return the bytes one GPU sends per step for tp, pp, dp and ep (rank with the most layers).

    With S = seq_len * micro_batch * hidden_size * 2 bytes (one bf16
    activation of a microbatch), M microbatches, L_r layers on the rank:

    - tp: every attention or MLP block all-reduces S once in the forward and
      once in the backward pass. With sequence parallelism these become an
      all-gather plus a reduce-scatter, the same bytes. "full" recomputation
      repeats the forward one. Ring all-reduce: 2(t-1)/t * S each.
    - pp: per microbatch and model chunk, the activation forward and its
      gradient backward, each S / tp per GPU (Megatron's scatter-gather
      split over the tp ranks): 2 * v * M * S / tp when pp > 1.
    - dp: the gradients of the rank's parameters (``stage_params``),
      2 bytes each, all-reduced over dp (expert gradients over dp / ep);
      ZeRO-1 and ZeRO-2 send the same bytes as reduce-scatter plus
      all-gather, ZeRO-3 1.5x (weights gathered in forward and backward).
    - ep: per MoE layer and microbatch, dispatch and combine all-to-alls in
      the forward and the backward pass (and the forward again with "full"
      recomputation), each of seq_len * micro_batch / tp tokens times top_k
      copies of hidden_size * 2 bytes, of which (ep-1)/ep leave the GPU.

    NOTE: the dp figure assumes 16-bit gradient reduction; frameworks that
    reduce in fp32 send twice as much.
    """
    tp, pp, dp, ep, v = config.tp, config.pp, config.dp, config.ep, config.num_chunks
    s, b, h = settings.seq_len, settings.micro_batch, model.hidden_size
    activation = s * b * h * 2
    M = num_microbatches(config, settings)
    forward_passes = 2 if settings.recompute == "full" else 1

    ranks = range(pp)
    layers_by_rank = [stage_layers(model, config, rank) for rank in ranks]
    blocks = max(sum(3 if has_cross_attention(model, layer) else 2 for layer in layers) for layers in layers_by_rank)
    tp_bytes = blocks * M * (forward_passes + 1) * ring_all_reduce_bytes(activation, tp)

    pp_bytes = 2 * v * M * activation / tp if pp > 1 else 0.0

    params = [stage_params(model, config, rank) for rank in ranks]
    dp_factor = 1.5 if settings.zero_stage == 3 else 1.0
    dp_bytes = max(
        dp_factor * (ring_all_reduce_bytes(p.dense * 2, dp) + ring_all_reduce_bytes(p.expert * 2, dp // ep))
        for p in params
    )

    moe_layers = max(sum(1 for layer in layers if is_moe_layer(model, layer)) for layers in layers_by_rank)
    dispatch = s * b / tp * max(model.top_k, 1) * h * 2
    ep_bytes = moe_layers * M * 2 * (forward_passes + 1) * all_to_all_bytes(dispatch, ep)
    return CommVolume(tp=tp_bytes, pp=pp_bytes, dp=dp_bytes, ep=ep_bytes)


# ---------------------------------------------------------------------------
# Step time
# ---------------------------------------------------------------------------


def step_flops(model: ModelSpec, settings: TrainingSettings, assumptions: StepTimeAssumptions = StepTimeAssumptions()) -> tuple[float, float]:
    """Return (model FLOP, hardware FLOP) of one training step, summed over all GPUs.

    Model FLOP: 6 * N * tokens with N = active parameters minus the input
    embedding (a lookup, no matmul) and tokens = global_batch * seq_len,
    plus with ``assumptions.attention_flops`` 6 * s * a * (head_dim +
    v_head_dim) per token per attention block. Hardware FLOP adds the
    recomputed forward work: "selective" one third of the attention-score
    FLOP, "full" one third of all layer FLOP (the output head is not
    recomputed). MTP modules are not counted.
    """
    counts = count_parameters(model)
    tokens = settings.global_batch * settings.seq_len
    head = model.vocab_size * model.hidden_size
    layer_params_active = counts.active - counts.embedding - counts.output_head - norm_params(model)
    head_flops = 6 * head * tokens
    layer_flops = 6 * layer_params_active * tokens
    attention_blocks = model.num_layers + model.num_cross_attention_layers
    attention = 0.0
    if assumptions.attention_flops:
        per_token = 6 * settings.seq_len * model.num_attention_heads * (model.head_dim + model.v_head_dim)
        attention = per_token * attention_blocks * tokens
    model_flops = head_flops + layer_flops + attention
    if settings.recompute == "full":
        recomputed = (layer_flops + attention) / 3
    elif settings.recompute == "selective":
        recomputed = attention / 3
    else:
        recomputed = 0.0
    return model_flops, model_flops + recomputed


def estimate_step_time(
    model: ModelSpec,
    cluster: ClusterSpec,
    config: ParallelConfig,
    settings: TrainingSettings,
    assumptions: StepTimeAssumptions = StepTimeAssumptions(),
) -> StepTimeEstimate:
    """Estimate the seconds of one training step.

    - compute = hardware FLOP (``step_flops``) / (num_gpus * bf16_flops * mfu)
    - bubble = compute * (P - 1) / (v * M), so that the bubble's share of
      compute + bubble is (P - 1) / (v*M + P - 1)
    - each kind of communication: bytes from ``communication_per_step``
      divided by the bandwidth from ``link_bandwidths``, times (1 - its
      overlap fraction).

    Latency per message is ignored, and stages are assumed to take equal
    time.
    """
    # Hint: M = num_microbatches(config, settings); v = config.num_chunks.
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")


# ---------------------------------------------------------------------------
# Validity and search
# ---------------------------------------------------------------------------


def validate_config(
    model: ModelSpec, cluster: ClusterSpec, config: ParallelConfig, settings: TrainingSettings
) -> list[RuleFailure]:
    """Return the rules ``config`` breaks (empty when valid), in the order of RULES.

    - positive_degrees: tp, pp, dp, ep, num_chunks >= 1 (when this fails,
      no other rule is checked).
    - world_size: tp * pp * dp == num_gpus.
    - tp_within_node: tp divides gpus_per_node.
    - tp_divides_heads: tp divides num_attention_heads and num_kv_heads.
    - tp_divides_ffn: tp divides ffn_hidden_size (and expert_ffn_hidden_size
      for an MoE model).
    - pp_divides_layers: pp * num_chunks divides num_layers. NOTE: this
      leaves DeepSeek-V3 (61 layers) only pp = 1 or 61, although its own
      training split the layers unevenly over 16 stages.
    - ep_needs_experts: ep == 1 for a dense model.
    - ep_divides_dp: ep divides dp.
    - ep_divides_experts: ep divides num_experts (MoE models).
    - batch_divisible: dp * micro_batch divides global_batch.
    - interleaving: num_chunks > 1 needs pp > 1 and M divisible by pp.
    - memory: ``memory_per_gpu(...).total`` <= the GPU's ``memory_bytes``;
      checked only when every other rule holds. Its reason gives the need,
      the capacity and the excess in GB (10**9 bytes).
    """
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def enumerate_configs(
    model: ModelSpec, cluster: ClusterSpec, num_chunks_options: tuple[int, ...] = (1, 2, 4)
) -> Iterator[ParallelConfig]:
    """Yield every (tp, pp, dp, ep, num_chunks) with tp * pp * dp == num_gpus worth checking.

    tp runs over the divisors of gpus_per_node, pp over the divisors of the
    remaining GPUs that also divide num_layers, ep over the divisors of dp
    (only 1 for a dense model, only divisors of num_experts for an MoE
    model), num_chunks over ``num_chunks_options`` (only 1 when pp == 1).
    The candidates may still break other rules; filter with
    ``validate_config``.
    """
    for tp in _divisors(cluster.gpus_per_node):
        if cluster.num_gpus % tp:
            continue
        for pp in _divisors(cluster.num_gpus // tp):
            if model.num_layers % pp:
                continue
            dp = cluster.num_gpus // (tp * pp)
            eps = [ep for ep in _divisors(dp) if model.num_experts % ep == 0] if model.is_moe else [1]
            for ep in eps:
                for v in num_chunks_options if pp > 1 else (1,):
                    yield ParallelConfig(tp, pp, dp, ep, v)


def recommend(
    model: ModelSpec,
    cluster: ClusterSpec,
    settings: TrainingSettings,
    assumptions: StepTimeAssumptions = StepTimeAssumptions(),
    top: int | None = None,
) -> list[RankedConfig]:
    """Return the valid configurations, fastest estimated step first (ties: smaller tp, pp, ep, v).

    ``top`` keeps only the first ``top`` entries. An empty list means no
    configuration fits.
    """
    ranked = []
    for config in enumerate_configs(model, cluster):
        if validate_config(model, cluster, config, settings):
            continue
        estimate = estimate_step_time(model, cluster, config, settings, assumptions)
        ranked.append(
            RankedConfig(
                config=config,
                step_time=estimate,
                memory=memory_per_gpu(model, config, settings),
                comm=communication_per_step(model, config, settings),
            )
        )
    ranked.sort(key=lambda entry: (entry.step_time.total, entry.config.tp, entry.config.pp, entry.config.ep, entry.config.num_chunks))
    logger.debug("%d valid configurations for %s on %d GPUs", len(ranked), model.name, cluster.num_gpus)
    return ranked[:top] if top is not None else ranked


# ---------------------------------------------------------------------------
# Exercise 3 (grader-side helpers)
# ---------------------------------------------------------------------------


def exercise_3_settings() -> TrainingSettings:
    """Return the training settings of exercise 3.

    The exercise trains a Llama-2-70B-shaped model on 64 H100 80 GB, 8 per
    node. Each step takes 1024 sequences of 4096 tokens (4,194,304
    tokens) in microbatches of 1 sequence. Training
    uses bf16 mixed precision with Adam, ZeRO-1 (optimizer states sharded
    over dp), sequence parallelism and selective recomputation.
    """
    return TrainingSettings(
        seq_len=4096,
        global_batch=1024,
        micro_batch=1,
        precision="bf16",
        zero_stage=1,
        sequence_parallel=True,
        recompute="selective",
    )


def exercise_3_problem() -> tuple[ModelSpec, ClusterSpec, TrainingSettings]:
    """Return the model, cluster and settings of exercise 3."""
    cluster = make_cluster(load_gpu("h100-80gb"), num_gpus=64, gpus_per_node=8)
    return load_model("llama-2-70b"), cluster, exercise_3_settings()
