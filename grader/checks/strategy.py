"""Checks for ``strategy.py``: parameter counts, memory, validity rules, step time.

Inputs are the published models in ``datasets/models`` plus random model
shapes (dense and MoE, MHA to MQA, gated or not, tied or not) and random
parallel configurations. Every value is compared with the reference; floats
with a relative tolerance of 1e-9, since both sides evaluate the same closed
forms.
"""

from __future__ import annotations

import functools

from hypothesis import given
from hypothesis import strategies as st

from reference import strategy as ref

from ..checking import CheckFailed, check, run_property
from ..sandbox import Record, Worker
from .values import as_number, call_or_fail, close

MODEL_NAMES = ("llama-2-7b", "llama-2-70b", "gpt-3-175b", "mixtral-8x7b", "deepseek-v3", "switch-c-2048")


@functools.lru_cache(maxsize=None)
def published_model(name: str) -> ref.ModelSpec:
    return ref.load_model(name)


@st.composite
def random_models(draw) -> ref.ModelSpec:
    """Draw a small random transformer shape: dense or MoE, any head grouping."""
    heads = draw(st.sampled_from([1, 2, 4, 8, 12, 16]))
    kv_heads = draw(st.sampled_from([k for k in (1, 2, 4, 8, 16) if heads % k == 0]))
    head_dim = draw(st.sampled_from([8, 16, 64]))
    hidden = heads * head_dim * draw(st.sampled_from([1, 2]))
    layers = draw(st.integers(1, 12))
    moe = draw(st.booleans())
    num_experts = draw(st.sampled_from([4, 8, 16])) if moe else 0
    return ref.ModelSpec(
        name="random",
        num_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        ffn_hidden_size=hidden * draw(st.sampled_from([2, 4])),
        vocab_size=draw(st.sampled_from([1000, 32000, 50257])),
        gated_mlp=draw(st.booleans()),
        tie_embeddings=draw(st.booleans()),
        position_embeddings=draw(st.sampled_from([0, 2048])),
        linear_bias=draw(st.booleans()),
        norm=draw(st.sampled_from(["rmsnorm", "layernorm"])),
        v_head_dim=head_dim,
        num_experts=num_experts,
        num_shared_experts=draw(st.integers(0, 2)) if moe else 0,
        top_k=draw(st.integers(1, min(4, num_experts))) if moe else 0,
        expert_ffn_hidden_size=hidden * draw(st.sampled_from([1, 2])) if moe else 0,
        first_dense_layers=draw(st.integers(0, layers - 1)) if moe else 0,
        moe_layer_interval=draw(st.integers(1, 2)) if moe else 1,
        num_cross_attention_layers=draw(st.integers(0, min(2, layers))),
    )


MODELS = st.one_of(st.sampled_from(MODEL_NAMES).map(published_model), random_models())


def _call(worker: Worker, function: str, *args, context: str):
    return call_or_fail(worker, "strategy", function, *args, context=context)


def _record(value, type_name: str, fields, context: str) -> Record:
    if not isinstance(value, Record):
        raise CheckFailed(f"{context}: returned {type(value).__name__}; expected {type_name}")
    missing = [f for f in fields if f not in value]
    if missing:
        raise CheckFailed(f"{context}: the returned {value.type_name} lacks {', '.join(missing)}")
    return value


def _compare_fields(got: Record, expected, context: str, unit: str = "", exact: bool = False) -> str | None:
    """Return the first field that differs, or None; raise on a non-number."""
    for field in expected._fields:
        want = getattr(expected, field)
        have = got[field]
        if exact:
            if type(have) is not int or have != want:
                return f"{field} is {have!r}, expected {want}{unit}"
        else:
            value = as_number(have, f"{context}: {field}")
            if not close(value, float(want), rel=1e-9, abs_tol=1e-6):
                return f"{field} is {value:.6g}, expected {float(want):.6g}{unit}"
    return None


def _model_label(model: ref.ModelSpec) -> str:
    if model.name != "random":
        return model.name
    kind = f"MoE {model.num_experts} experts top-{model.top_k}" if model.is_moe else "dense"
    return (f"a {kind} model with L={model.num_layers}, h={model.hidden_size}, "
            f"heads={model.num_attention_heads}/{model.num_kv_heads}, ffn={model.ffn_hidden_size}, "
            f"gated={model.gated_mlp}, tied={model.tie_embeddings}, bias={model.linear_bias}, "
            f"norm={model.norm}, cross-attention layers={model.num_cross_attention_layers}")


@check("strategy.count_parameters", modules=("strategy",))
def count_parameters_check(worker: Worker) -> None:
    """Total and active parameter counts of published and random models."""
    worker.import_module("strategy")

    @given(MODELS, st.booleans())
    def count_property(model, include_mtp) -> None:
        context = f"count_parameters({_model_label(model)}, include_mtp={include_mtp})"
        got = _record(_call(worker, "count_parameters", model, include_mtp, context=context),
                      "ParamCounts", ref.ParamCounts._fields, context)
        expected = ref.count_parameters(model, include_mtp)
        problem = _compare_fields(got, expected, context, exact=True)
        if problem:
            hint = None
            if got["total"] == expected.total - expected.output_head and expected.output_head:
                hint = "an untied output head is a second vocab_size x hidden_size matrix"
            elif model.is_moe and got["active"] == expected.total:
                hint = "a token uses only top_k routed experts, so active < total for MoE"
            raise CheckFailed(f"{context}: {problem}", hint)

    run_property(count_property, max_examples=60)


@check("strategy.model_state_bytes", modules=("strategy",))
def model_state_bytes_check(worker: Worker) -> None:
    """Weights, gradients and optimizer states under ZeRO stages 0-3."""
    worker.import_module("strategy")

    @given(st.integers(1, 10**12), st.sampled_from([1, 2, 4, 8, 64, 1024]), st.integers(0, 3),
           st.sampled_from(list(ref.PRECISIONS)))
    def state_property(num_params, dp, zero_stage, precision) -> None:
        context = f"model_state_bytes({num_params}, dp={dp}, zero_stage={zero_stage}, precision={precision!r})"
        got = _record(_call(worker, "model_state_bytes", num_params, dp, zero_stage, precision, context=context),
                      "ModelStateBytes", ref.ModelStateBytes._fields, context)
        expected = ref.model_state_bytes(num_params, dp, zero_stage, precision)
        problem = _compare_fields(got, expected, context, " bytes")
        if problem:
            raise CheckFailed(f"{context}: {problem}", _zero_misconception(got, num_params, dp, zero_stage, precision))

    run_property(state_property, max_examples=60)


def _zero_misconception(got: Record, num_params, dp, zero_stage, precision) -> str | None:
    if got["optimizer_states"] == 0:
        return "optimizer states forgotten: mixed-precision Adam keeps 12 bytes per parameter of them"
    for other in range(4):
        if other == zero_stage:
            continue
        candidate = ref.model_state_bytes(num_params, dp, other, precision)
        if all(close(float(got[f]), float(getattr(candidate, f)), rel=1e-9) for f in candidate._fields):
            return (f"these are ZeRO stage {other}'s numbers: stage 1 shards optimizer states, "
                    "stage 2 also gradients, stage 3 also weights")
    return None


@st.composite
def settings_strategy(draw) -> ref.TrainingSettings:
    return ref.TrainingSettings(
        seq_len=draw(st.sampled_from([512, 2048, 4096])),
        global_batch=draw(st.sampled_from([64, 256, 1024])),
        micro_batch=draw(st.sampled_from([1, 2, 4])),
        precision=draw(st.sampled_from(list(ref.PRECISIONS))),
        zero_stage=draw(st.integers(0, 3)),
        sequence_parallel=draw(st.booleans()),
        recompute=draw(st.sampled_from(list(ref.RECOMPUTE_MODES))),
    )


@check("strategy.activation_memory", modules=("strategy",))
def activation_memory_check(worker: Worker) -> None:
    """Per-layer activation bytes after Korthikanti et al. (2022)."""
    worker.import_module("strategy")

    @given(MODELS, settings_strategy(), st.sampled_from([1, 2, 4, 8]), st.data())
    def activation_property(model, settings, tp, data) -> None:
        layer = data.draw(st.integers(0, model.num_layers - 1), label="layer")
        context = (f"layer_activation_bytes({_model_label(model)}, seq_len={settings.seq_len}, "
                   f"micro_batch={settings.micro_batch}, sequence_parallel={settings.sequence_parallel}, "
                   f"recompute={settings.recompute!r}, tp={tp}, layer={layer})")
        value = _call(worker, "layer_activation_bytes", model, settings, tp, layer, context=context)
        got = as_number(value, context)
        expected = ref.layer_activation_bytes(model, settings, tp, layer)
        if not close(got, expected, rel=1e-9):
            hint = None
            if settings.recompute == "selective" and close(
                    got, ref.layer_activation_bytes(model, settings._replace(recompute="none"), tp, layer)):
                hint = "selective recomputation drops the 5as^2b attention-score terms"
            raise CheckFailed(f"{context} returned {got:.6g} bytes, expected {expected:.6g}", hint)

    run_property(activation_property, max_examples=60)


@st.composite
def configs_for(draw, model: ref.ModelSpec, valid_only: bool) -> tuple[ref.ClusterSpec, ref.ParallelConfig]:
    tp = draw(st.sampled_from([1, 2, 4, 8]))
    pp_choices = [p for p in (1, 2, 3, 4, 8) if not valid_only or model.num_layers % p == 0]
    pp = draw(st.sampled_from(pp_choices))
    dp = draw(st.sampled_from([1, 2, 4, 8]))
    ep = draw(st.sampled_from([e for e in (1, 2, 4, 8) if dp % e == 0 and (model.is_moe or e == 1)]
                              if valid_only else [1, 2, 4]))
    v = draw(st.sampled_from([1, 2] if pp > 1 else [1]))
    num_gpus = tp * pp * dp
    if not valid_only and draw(st.booleans()):
        num_gpus *= 2
    gpus_per_node = max(d for d in (1, 2, 4, 8) if num_gpus % d == 0)
    cluster = ref.make_cluster(ref.load_gpu("h100-80gb"), num_gpus=num_gpus, gpus_per_node=gpus_per_node)
    return cluster, ref.ParallelConfig(tp, pp, dp, ep, v)


@check("strategy.stage_memory", modules=("strategy",))
def stage_memory_check(worker: Worker) -> None:
    """Memory per GPU of each pipeline rank: model states, activations times in-flight microbatches, logits."""
    worker.import_module("strategy")

    @given(MODELS, settings_strategy(), st.data())
    def memory_property(model, settings, data) -> None:
        _cluster, config = data.draw(configs_for(model, valid_only=True), label="config")
        rank = data.draw(st.integers(0, config.pp - 1), label="pp_rank")
        context = (f"stage_memory({_model_label(model)}, {tuple(config)} as (tp, pp, dp, ep, v), "
                   f"{dict(settings._asdict())}, pp_rank={rank})")
        got = _record(_call(worker, "stage_memory", model, config, settings, rank, context=context),
                      "MemoryBreakdown", ref.MemoryBreakdown._fields, context)
        expected = ref.stage_memory(model, config, settings, rank)
        problem = _compare_fields(got, expected, context, " bytes")
        if problem:
            raise CheckFailed(f"{context}: {problem}", _memory_misconception(got, expected, model, config, settings, rank))

    run_property(memory_property, max_examples=50)


def _memory_misconception(got, expected, model, config, settings, rank) -> str | None:
    if got["optimizer_states"] == 0 and expected.optimizer_states > 0:
        return "optimizer states forgotten"
    in_flight = ref.in_flight_microbatches(config.pp, ref.num_microbatches(config, settings), rank, config.num_chunks)
    if in_flight != 1 and isinstance(got["activations"], (int, float)):
        base = expected.activations
        if settings.recompute == "full":
            stored = settings._replace(recompute="none")
            layers = ref.stage_layers(model, config, rank)
            base -= max((ref.layer_activation_bytes(model, stored, config.tp, layer) for layer in layers), default=0)
            base = base / in_flight + (expected.activations - base)
        else:
            base = base / in_flight
        if close(float(got["activations"]), base, rel=1e-6):
            return (f"activations not multiplied by the in-flight microbatches: rank {rank} keeps "
                    f"{in_flight:g} microbatches' activations at its peak")
    return None


@check("strategy.validate_config", modules=("strategy",))
def validate_config_check(worker: Worker) -> None:
    """Check the rules a configuration breaks, by name, for valid and invalid configurations."""
    worker.import_module("strategy")

    @given(MODELS, settings_strategy(), st.data())
    def validity_property(model, settings, data) -> None:
        cluster, config = data.draw(configs_for(model, valid_only=data.draw(st.booleans(), label="valid_only")),
                                    label="config")
        context = (f"validate_config({_model_label(model)}, {cluster.num_gpus} GPUs with "
                   f"{cluster.gpus_per_node} per node, {tuple(config)} as (tp, pp, dp, ep, v), "
                   f"global_batch={settings.global_batch}, micro_batch={settings.micro_batch})")
        value = _call(worker, "validate_config", model, cluster, config, settings, context=context)
        if not isinstance(value, list):
            raise CheckFailed(f"{context}: returned {type(value).__name__}; expected a list of RuleFailure")
        got = []
        for item in value:
            if not isinstance(item, Record) or not isinstance(item.get("rule"), str) \
                    or not isinstance(item.get("reason"), str):
                raise CheckFailed(f"{context}: each failure must be RuleFailure(rule: str, reason: str)")
            got.append(item["rule"])
        expected = [failure.rule for failure in ref.validate_config(model, cluster, config, settings)]
        if got != expected:
            raise CheckFailed(f"{context}: reports rules {got}, expected {expected}")

    run_property(validity_property, max_examples=60)


@check("strategy.step_time", modules=("strategy",))
def step_time_check(worker: Worker) -> None:
    """Estimated step time: compute, bubble and exposed communication."""
    worker.import_module("strategy")

    @given(st.sampled_from(MODEL_NAMES).map(published_model), settings_strategy(), st.data())
    def step_time_property(model, settings, data) -> None:
        cluster, config = data.draw(configs_for(model, valid_only=True), label="config")
        if settings.global_batch % (config.dp * settings.micro_batch):
            settings = settings._replace(micro_batch=1, global_batch=config.dp * 64)
        context = (f"estimate_step_time({model.name}, {cluster.num_gpus} GPUs, "
                   f"{tuple(config)} as (tp, pp, dp, ep, v), global_batch={settings.global_batch})")
        got = _record(_call(worker, "estimate_step_time", model, cluster, config, settings, context=context),
                      "StepTimeEstimate", ref.StepTimeEstimate._fields, context)
        expected = ref.estimate_step_time(model, cluster, config, settings)
        problem = _compare_fields(got, expected, context, " s")
        if problem:
            hint = None
            if config.pp > 1 and close(float(got["bubble"]), 0.0):
                hint = "the pipeline bubble adds compute * (P - 1) / (v M) seconds"
            raise CheckFailed(f"{context}: {problem}", hint)

    run_property(step_time_property, max_examples=40)
