"""Tests of reference.strategy against published figures and formulas computed here."""

from __future__ import annotations

import itertools
import math

import pytest

from reference.strategy import (
    GB,
    RULES,
    ClusterSpec,
    ModelSpec,
    ParallelConfig,
    StepTimeAssumptions,
    TrainingSettings,
    available_specs,
    communication_per_step,
    count_parameters,
    enumerate_configs,
    estimate_step_time,
    exercise_3_problem,
    exercise_3_settings,
    in_flight_microbatches,
    layer_activation_bytes,
    layer_params,
    load_gpu,
    load_model,
    make_cluster,
    memory_per_gpu,
    model_state_bytes,
    recommend,
    stage_memory,
    validate_config,
)


def gpt_model(hidden: int, heads: int, layers: int = 4, vocab: int = 51200, seq: int = 2048) -> ModelSpec:
    """GPT layer as in Megatron-LM and Korthikanti et al.: MHA, 4h GeLU MLP, biases, LayerNorm, tied embeddings."""
    return ModelSpec(
        name=f"gpt-h{hidden}-a{heads}-l{layers}",
        num_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        v_head_dim=hidden // heads,
        ffn_hidden_size=4 * hidden,
        vocab_size=vocab,
        gated_mlp=False,
        tie_embeddings=True,
        position_embeddings=seq,
        linear_bias=True,
        norm="layernorm",
    )


# ---------------------------------------------------------------------------
# ZeRO (Rajbhandari et al. 2020, Figure 1)
# ---------------------------------------------------------------------------

# 7.5B parameters, Nd = 64 data-parallel GPUs, K = 12 optimizer bytes per parameter.
ZERO_FIGURE_1_GB = {0: 120.0, 1: 31.4, 2: 16.6, 3: 1.88}


@pytest.mark.parametrize("zero_stage", sorted(ZERO_FIGURE_1_GB))
def test_zero_figure_1_memory(zero_stage):
    state = model_state_bytes(7.5e9, dp=64, zero_stage=zero_stage, precision="bf16")
    total_gb = (state.weights + state.gradients + state.optimizer_states) / GB
    # The paper prints 3 significant digits.
    assert total_gb == pytest.approx(ZERO_FIGURE_1_GB[zero_stage], rel=5e-3)


def test_zero_stage_shards_each_state():
    base = model_state_bytes(1e9, dp=8, zero_stage=0)
    assert base == (2e9, 2e9, 12e9)
    assert model_state_bytes(1e9, dp=8, zero_stage=1).optimizer_states == 12e9 / 8
    assert model_state_bytes(1e9, dp=8, zero_stage=2).gradients == 2e9 / 8
    assert model_state_bytes(1e9, dp=8, zero_stage=3).weights == 2e9 / 8
    assert model_state_bytes(1e9, dp=8, zero_stage=0, precision="fp32") == (4e9, 4e9, 8e9)


def test_zero_stage_rejects_invalid():
    with pytest.raises(ValueError, match="zero_stage"):
        model_state_bytes(1e9, dp=8, zero_stage=4)
    with pytest.raises(ValueError, match="precision"):
        model_state_bytes(1e9, dp=8, zero_stage=1, precision="int8")


# ---------------------------------------------------------------------------
# Activations (Korthikanti et al. 2022, "Reducing Activation Recomputation in
# Large Transformer Models", section 4 and Table 2)
# ---------------------------------------------------------------------------

ACTIVATION_CASES = [
    # (s, b, h, a, t)
    (2048, 1, 12288, 96, 1),
    (2048, 1, 12288, 96, 8),
    (2048, 4, 4096, 32, 2),
    (4096, 2, 8192, 64, 4),
    (1024, 8, 2304, 24, 1),
    (8192, 1, 25600, 160, 8),
]


def korthikanti_bytes(s, b, h, a, t, sequence_parallel, recompute):
    if recompute == "full":
        return 2 * s * b * h / (t if sequence_parallel else 1)
    scores = 0 if recompute == "selective" else 5 * a * s / h
    if t == 1:
        return s * b * h * (34 + scores)
    if sequence_parallel:
        return s * b * h / t * (34 + scores)
    return s * b * h * (10 + 24 / t + scores / t)


@pytest.mark.parametrize("s,b,h,a,t", ACTIVATION_CASES)
@pytest.mark.parametrize("sequence_parallel", [False, True])
@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
def test_activation_bytes_match_korthikanti(s, b, h, a, t, sequence_parallel, recompute):
    model = gpt_model(hidden=h, heads=a)
    settings = TrainingSettings(
        seq_len=s, global_batch=b, micro_batch=b, sequence_parallel=sequence_parallel, recompute=recompute
    )
    expected = korthikanti_bytes(s, b, h, a, t, sequence_parallel, recompute)
    assert layer_activation_bytes(model, settings, t, layer=0) == pytest.approx(expected, rel=1e-12)


def test_activation_gqa_is_smaller_than_mha():
    mha = gpt_model(hidden=8192, heads=64)
    gqa = mha._replace(num_kv_heads=8)
    settings = TrainingSettings(seq_len=4096, global_batch=1, recompute="selective", sequence_parallel=False)
    # K and V shrink from 2sbh each to 2sb*h/8 each: 4sbh * 7/8 less.
    saved = layer_activation_bytes(mha, settings, 1, 0) - layer_activation_bytes(gqa, settings, 1, 0)
    assert saved == pytest.approx(4 * 4096 * 8192 * 7 / 8)


def test_in_flight_microbatches_1f1b():
    for P, M in [(4, 16), (8, 8), (8, 3), (1, 5)]:
        for rank in range(P):
            assert in_flight_microbatches(P, M, rank) == min(P - rank, M)


def test_in_flight_interleaved_matches_korthikanti_factor():
    # Korthikanti et al. 2022: interleaving multiplies the first stage's
    # activation memory by 1 + (P-1)/(P*v) relative to L layers of one microbatch.
    for P, v in [(4, 2), (8, 2), (8, 4), (16, 3)]:
        layers_per_rank = P * v  # L = P * v * P, so every chunk has P layers
        total_layers = layers_per_rank * P
        held_layers = in_flight_microbatches(P, 1000, 0, v) * layers_per_rank
        assert held_layers == pytest.approx(total_layers * (1 + (P - 1) / (P * v)))


def test_first_stage_holds_most_activations():
    model = gpt_model(hidden=4096, heads=32, layers=32)
    settings = TrainingSettings(seq_len=2048, global_batch=64, recompute="selective")
    config = ParallelConfig(tp=2, pp=4, dp=1)
    first = stage_memory(model, config, settings, 0)
    per_layer = layer_activation_bytes(model, settings, 2, 0)
    assert first.activations == pytest.approx(per_layer * 8 * 4)  # 8 layers, P = 4 microbatches
    second = stage_memory(model, config, settings, 1)
    assert second.activations == pytest.approx(per_layer * 8 * 3)


def test_last_stage_holds_logits():
    model = gpt_model(hidden=4096, heads=32, layers=32)
    settings = TrainingSettings(seq_len=2048, global_batch=64, micro_batch=2)
    config = ParallelConfig(tp=4, pp=4, dp=1)
    last = stage_memory(model, config, settings, 3)
    assert last.logits == pytest.approx(2048 * 2 * 51200 / 4 * 6)
    assert stage_memory(model, config, settings, 0).logits == 0


def test_full_recompute_adds_one_layer_working_set():
    model = gpt_model(hidden=4096, heads=32, layers=32)
    settings = TrainingSettings(seq_len=2048, global_batch=64, recompute="full", sequence_parallel=False)
    config = ParallelConfig(tp=2, pp=4, dp=1)
    s, b, h, a, t = 2048, 1, 4096, 32, 2
    expected = 8 * 4 * 2 * s * b * h + korthikanti_bytes(s, b, h, a, t, False, "none")
    assert stage_memory(model, config, settings, 0).activations == pytest.approx(expected)


def test_expert_weights_split_by_ep():
    model = load_model("mixtral-8x7b")
    settings = TrainingSettings(seq_len=4096, global_batch=64, zero_stage=0)
    one = stage_memory(model, ParallelConfig(tp=1, pp=1, dp=8, ep=1), settings, 0)
    eight = stage_memory(model, ParallelConfig(tp=1, pp=1, dp=8, ep=8), settings, 0)
    counts = count_parameters(model)
    assert one.weights - eight.weights == pytest.approx(2 * counts.expert * 7 / 8)


# ---------------------------------------------------------------------------
# Parameter counts against published figures
# ---------------------------------------------------------------------------

SHIPPED_MODELS = ["llama-2-7b", "llama-2-70b", "gpt-3-175b", "mixtral-8x7b", "deepseek-v3", "switch-c-2048"]


def test_shipped_models_present():
    assert set(SHIPPED_MODELS) <= set(available_specs("models"))
    assert {"a100-80gb", "h100-80gb", "h200-141gb"} <= set(available_specs("hardware"))


@pytest.mark.parametrize("name", SHIPPED_MODELS)
def test_total_params_within_1_percent(name):
    model = load_model(name)
    assert model.source
    assert model.published_total_params > 0
    total = count_parameters(model).total
    assert abs(total / model.published_total_params - 1) < 0.01


def test_published_counts_match():
    # The published counts, typed here from the sources named in each file.
    published = {
        "llama-2-7b": 6.74e9,
        "llama-2-70b": 69e9,
        "gpt-3-175b": 175e9,
        "mixtral-8x7b": 46.7e9,
        "deepseek-v3": 671e9,
        "switch-c-2048": 1571e9,
    }
    for name, value in published.items():
        assert load_model(name).published_total_params == value, name


@pytest.mark.parametrize("name,active", [("mixtral-8x7b", 12.9e9), ("deepseek-v3", 37e9)])
def test_active_params_within_2_percent(name, active):
    counts = count_parameters(load_model(name))
    assert abs(counts.active / active - 1) < 0.02


def test_dense_models_all_params_active():
    for name in ["llama-2-7b", "llama-2-70b", "gpt-3-175b"]:
        counts = count_parameters(load_model(name))
        assert counts.active == counts.total
        assert counts.expert == 0


def test_deepseek_v3_mtp_module():
    model = load_model("deepseek-v3")
    without = count_parameters(model)
    with_mtp = count_parameters(model, include_mtp=True)
    assert with_mtp.total - without.total == without.mtp
    # Hugging Face model card: 685B in the checkpoint, 671B main model + 14B MTP.
    # The checkpoint stores its own copy of the embedding and head (2 * 129280 * 7168).
    checkpoint = with_mtp.total + 2 * 129280 * 7168
    assert abs(checkpoint / 685e9 - 1) < 0.01


def test_llama_2_70b_shape_by_hand():
    # Independent count from the published shapes: GQA with 8 KV heads, SwiGLU, RMSNorm, untied.
    h, layers, f, vocab, kv = 8192, 80, 28672, 32000, 8 * 128
    attention = 2 * h * h + 2 * h * kv
    mlp = 3 * h * f
    expected = layers * (attention + mlp + 2 * h) + 2 * vocab * h + h
    assert count_parameters(load_model("llama-2-70b")).total == expected


def test_mixtral_moe_layer_by_hand():
    h, kv, f, experts = 4096, 8 * 128, 14336, 8
    attention = 2 * h * h + 2 * h * kv
    shared = attention + 2 * h + h * experts  # two RMSNorms and the router
    one_expert = 3 * h * f
    params = layer_params(load_model("mixtral-8x7b"), 0)
    assert params.dense == shared
    assert params.expert == experts * one_expert
    assert params.active == shared + 2 * one_expert


def test_deepseek_v3_layers_by_hand():
    h, heads = 7168, 128
    # MLA: query down + norm + up, key/value down (latent 512 + rotary 64) + norm + up, output.
    mla = h * 1536 + 1536 + 1536 * heads * 192 + h * (512 + 64) + 512 + 512 * heads * (128 + 128) + heads * 128 * h
    one_expert = 3 * h * 2048
    model = load_model("deepseek-v3")
    dense_layer = layer_params(model, 2)
    assert dense_layer.dense == mla + 2 * h + 3 * h * 18432
    assert dense_layer.expert == 0
    moe_layer = layer_params(model, 3)
    assert moe_layer.dense == mla + 2 * h + h * 256 + one_expert
    assert moe_layer.expert == 256 * one_expert
    assert moe_layer.active == moe_layer.dense + 8 * one_expert


MEGATRON_TABLE_1 = {
    # name: (published billions, heads, hidden, layers, tp, pp, gpus, global batch)
    "145.6B": (145.6, 96, 12288, 80, 8, 8, 1536, 2304),
    "310.1B": (310.1, 128, 16384, 96, 8, 16, 1920, 2160),
    "529.6B": (529.6, 128, 20480, 105, 8, 35, 2520, 2520),
    "1T": (1008.0, 160, 25600, 128, 8, 64, 3072, 3072),
}


@pytest.mark.parametrize("name", sorted(MEGATRON_TABLE_1))
def test_megatron_param_formula(name):
    billions, heads, hidden, layers, *_ = MEGATRON_TABLE_1[name]
    model = gpt_model(hidden=hidden, heads=heads, layers=layers)
    # Narayanan et al. 2021: P = 12 l h^2 (1 + 13/(12h) + (V + s)/(12 l h)).
    formula = 12 * layers * hidden**2 * (1 + 13 / (12 * hidden) + (51200 + 2048) / (12 * layers * hidden))
    total = count_parameters(model).total
    # Our count adds the final LayerNorm (2h), which the formula leaves out.
    assert total - formula == pytest.approx(2 * hidden, abs=1)
    assert abs(total / (billions * 1e9) - 1) < 0.001


# ---------------------------------------------------------------------------
# Megatron-LM 2021 configurations (Narayanan et al., Table 1) are valid
# ---------------------------------------------------------------------------


def megatron_case(name):
    _, heads, hidden, layers, tp, pp, gpus, batch = MEGATRON_TABLE_1[name]
    model = gpt_model(hidden=hidden, heads=heads, layers=layers)
    cluster = make_cluster(load_gpu("a100-80gb"), gpus, 8)
    # The 2021 runs: 16-bit mixed precision with Adam, no ZeRO, no sequence
    # parallelism (introduced in 2022), full activation recomputation,
    # microbatches of 1 sequence of 2048 tokens.
    # NOTE: the global batch sizes are as recalled from Table 1; with 1F1B
    # they only set M, and M >= P in every row, so memory does not depend on them.
    settings = TrainingSettings(
        seq_len=2048, global_batch=batch, micro_batch=1, precision="fp16",
        zero_stage=0, sequence_parallel=False, recompute="full",
    )
    config = ParallelConfig(tp=tp, pp=pp, dp=gpus // (tp * pp))
    return model, cluster, config, settings


def test_megatron_145b_t8_p8_valid():
    assert validate_config(*megatron_case("145.6B")) == []


def test_megatron_310b_t8_p16_valid():
    assert validate_config(*megatron_case("310.1B")) == []


def test_megatron_530b_t8_p35_valid():
    assert validate_config(*megatron_case("529.6B")) == []


def test_megatron_1t_t8_p64_valid():
    assert validate_config(*megatron_case("1T")) == []


def test_megatron_1t_needs_recompute():
    model, cluster, config, settings = megatron_case("1T")
    failures = validate_config(model, cluster, config, settings._replace(recompute="none"))
    assert [failure.rule for failure in failures] == ["memory"]


# ---------------------------------------------------------------------------
# Validity rules
# ---------------------------------------------------------------------------


@pytest.fixture
def llama70():
    model = load_model("llama-2-70b")
    cluster = make_cluster(load_gpu("h100-80gb"), 64, 8)
    settings = TrainingSettings(seq_len=4096, global_batch=1024)
    return model, cluster, settings


def rules_of(failures):
    return [failure.rule for failure in failures]


def test_rule_world_size(llama70):
    model, cluster, settings = llama70
    failures = validate_config(model, cluster, ParallelConfig(8, 4, 1), settings)
    assert rules_of(failures) == ["world_size"]
    assert "= 32" in failures[0].reason
    assert "64 GPUs" in failures[0].reason


def test_rule_tp_within_node(llama70):
    model, cluster, settings = llama70
    assert "tp_within_node" in rules_of(validate_config(model, cluster, ParallelConfig(16, 4, 1), settings))


def test_rule_tp_divides_kv_heads():
    model = load_model("llama-2-70b")
    cluster = make_cluster(load_gpu("h100-80gb"), 64, 16)
    settings = TrainingSettings(seq_len=4096, global_batch=1024)
    # 16 divides the 64 query heads but not the 8 key/value heads.
    failures = validate_config(model, cluster, ParallelConfig(16, 4, 1), settings)
    assert "tp_divides_heads" in rules_of(failures)
    assert "num_kv_heads=8" in failures[rules_of(failures).index("tp_divides_heads")].reason


def test_rule_pp_divides_layers(llama70):
    model, cluster, settings = llama70
    failures = validate_config(model, cluster, ParallelConfig(2, 32, 1), settings)
    assert rules_of(failures) == ["pp_divides_layers"]
    failures = validate_config(model, cluster, ParallelConfig(8, 8, 1, num_chunks=4), settings)
    assert "pp_divides_layers" in rules_of(failures)  # 8 * 4 does not divide 80


def test_rule_ep_rules():
    model = load_model("mixtral-8x7b")
    cluster = make_cluster(load_gpu("h100-80gb"), 64, 8)
    settings = TrainingSettings(seq_len=4096, global_batch=1024)
    assert "ep_divides_dp" in rules_of(validate_config(model, cluster, ParallelConfig(8, 2, 4, ep=8), settings))
    assert "ep_divides_experts" in rules_of(validate_config(model, cluster, ParallelConfig(4, 1, 16, ep=16), settings))
    dense = load_model("llama-2-70b")
    assert "ep_needs_experts" in rules_of(validate_config(dense, cluster, ParallelConfig(8, 2, 4, ep=2), settings))


def test_rule_batch_and_interleaving(llama70):
    model, cluster, settings = llama70
    # dp * micro_batch = 8 does not divide 1001 sequences.
    odd_batch = settings._replace(global_batch=1001)
    assert "batch_divisible" in rules_of(validate_config(model, cluster, ParallelConfig(8, 1, 8), odd_batch))
    # M = 1000 / 1 = 1000 is not a multiple of pp = 16 for interleaving.
    failures = validate_config(model, cluster, ParallelConfig(4, 16, 1, num_chunks=5), settings._replace(global_batch=1000))
    assert rules_of(failures) == ["interleaving"]


def test_rule_positive_degrees(llama70):
    model, cluster, settings = llama70
    assert rules_of(validate_config(model, cluster, ParallelConfig(0, 8, 8), settings)) == ["positive_degrees"]


def test_rule_memory_reason_gives_excess(llama70):
    model, cluster, settings = llama70
    config = ParallelConfig(1, 8, 8)
    failures = validate_config(model, cluster, config, settings)
    assert rules_of(failures) == ["memory"]
    need = memory_per_gpu(model, config, settings).total
    excess = (need - 80e9) / 1e9
    assert excess > 0
    assert f"{excess:.1f} GB more than the 80 GB" in failures[0].reason
    assert f"{need / 1e9:.1f} GB" in failures[0].reason


def test_memory_per_gpu_is_max_stage(llama70):
    model, _, settings = llama70
    config = ParallelConfig(4, 4, 4)
    stages = [stage_memory(model, config, settings, rank).total for rank in range(4)]
    assert memory_per_gpu(model, config, settings).total == max(stages)


# ---------------------------------------------------------------------------
# Communication and step time
# ---------------------------------------------------------------------------


def test_dp_bytes_ring_all_reduce():
    model = load_model("llama-2-7b")
    settings = TrainingSettings(seq_len=4096, global_batch=64, zero_stage=1)
    dp = 8
    comm = communication_per_step(model, ParallelConfig(1, 1, dp), settings)
    total = count_parameters(model).total
    assert comm.dp == pytest.approx(2 * (dp - 1) / dp * total * 2)
    zero3 = communication_per_step(model, ParallelConfig(1, 1, dp), settings._replace(zero_stage=3))
    assert zero3.dp == pytest.approx(1.5 * comm.dp)
    assert comm.tp == comm.pp == comm.ep == 0


def test_tp_and_pp_bytes():
    model = load_model("llama-2-7b")
    s, b, h, L = 4096, 1, 4096, 32
    settings = TrainingSettings(seq_len=s, global_batch=32, recompute="selective")
    tp, pp = 4, 2
    comm = communication_per_step(model, ParallelConfig(tp, pp, 1), settings)
    M = 32
    S = s * b * h * 2
    # Two blocks per layer, one all-reduce each in forward and backward.
    assert comm.tp == pytest.approx(L / pp * 2 * 2 * M * 2 * (tp - 1) / tp * S)
    assert comm.pp == pytest.approx(2 * M * S / tp)


def test_ep_bytes_all_to_all():
    model = load_model("mixtral-8x7b")
    s, h, k, ep = 4096, 4096, 2, 8
    settings = TrainingSettings(seq_len=s, global_batch=64, recompute="none")
    comm = communication_per_step(model, ParallelConfig(1, 1, 8, ep=ep), settings)
    M = 64 // 8
    per_all_to_all = s * k * h * 2 * (ep - 1) / ep
    assert comm.ep == pytest.approx(32 * M * 4 * per_all_to_all)


def test_bubble_fraction_closed_form():
    model = load_model("llama-2-70b")
    cluster = make_cluster(load_gpu("h100-80gb"), 64, 8)
    for pp, v, batch in [(8, 1, 64), (4, 2, 32), (8, 1, 1024), (2, 4, 16)]:
        dp = 64 // (8 * pp)
        settings = TrainingSettings(seq_len=4096, global_batch=batch)
        estimate = estimate_step_time(model, cluster, ParallelConfig(8, pp, dp, num_chunks=v), settings)
        M = batch // dp
        fraction = estimate.bubble / (estimate.compute + estimate.bubble)
        assert fraction == pytest.approx((pp - 1) / (v * M + pp - 1))


def test_compute_time_six_n_d():
    model = load_model("llama-2-7b")
    cluster = make_cluster(load_gpu("a100-80gb"), 8, 8)
    settings = TrainingSettings(seq_len=2048, global_batch=64, recompute="none")
    assumptions = StepTimeAssumptions(mfu=0.4, attention_flops=False)
    estimate = estimate_step_time(model, cluster, ParallelConfig(1, 1, 8), settings, assumptions)
    counts = count_parameters(model)
    flops = 6 * (counts.total - counts.embedding) * 64 * 2048
    assert estimate.compute == pytest.approx(flops / (8 * 312e12 * 0.4))


def test_exposed_comm_uses_overlap_and_links():
    model = load_model("llama-2-7b")
    cluster = make_cluster(load_gpu("h100-80gb"), 16, 8)
    settings = TrainingSettings(seq_len=2048, global_batch=64)
    config = ParallelConfig(1, 1, 16)  # the dp group spans two nodes
    comm = communication_per_step(model, config, settings)
    for overlap in (0.0, 0.5, 1.0):
        estimate = estimate_step_time(model, cluster, config, settings, StepTimeAssumptions(dp_overlap=overlap))
        assert estimate.dp_comm == pytest.approx(comm.dp / 50e9 * (1 - overlap))
    inside = ParallelConfig(2, 1, 8)
    cluster_one_node = make_cluster(load_gpu("h100-80gb"), 16, 16)
    estimate = estimate_step_time(model, cluster_one_node, inside, settings, StepTimeAssumptions(dp_overlap=0.0))
    assert estimate.dp_comm == pytest.approx(communication_per_step(model, inside, settings).dp / 450e9)


# ---------------------------------------------------------------------------
# Enumeration and recommendation
# ---------------------------------------------------------------------------


def brute_force_valid(model, cluster, settings):
    valid = set()
    n = cluster.num_gpus
    for tp, pp, dp, ep, v in itertools.product(range(1, n + 1), range(1, n + 1), range(1, n + 1), range(1, n + 1), (1, 2, 4)):
        if tp * pp * dp != n or ep > dp:
            continue
        config = ParallelConfig(tp, pp, dp, ep, v)
        if v > 1 and pp == 1:
            continue
        if not validate_config(model, cluster, config, settings):
            valid.add(config)
    return valid


@pytest.mark.parametrize("name,gpus", [("mixtral-8x7b", 16), ("llama-2-7b", 16)])
def test_recommend_finds_all_valid(name, gpus):
    model = load_model(name)
    cluster = make_cluster(load_gpu("h100-80gb"), gpus, 8)
    settings = TrainingSettings(seq_len=4096, global_batch=256)
    ranked = recommend(model, cluster, settings)
    assert {entry.config for entry in ranked} == brute_force_valid(model, cluster, settings)
    times = [entry.step_time.total for entry in ranked]
    assert times == sorted(times)


def test_enumerate_configs_multiply_to_cluster():
    model = load_model("deepseek-v3")
    cluster = make_cluster(load_gpu("h200-141gb"), 4096, 8)
    configs = list(enumerate_configs(model, cluster))
    assert configs
    for config in configs:
        assert config.tp * config.pp * config.dp == 4096
        assert config.dp % config.ep == 0


def test_recommend_empty_when_nothing_fits():
    model = load_model("llama-2-70b")
    cluster = make_cluster(load_gpu("h100-80gb"), 8, 8)
    assert recommend(model, cluster, TrainingSettings(seq_len=4096, global_batch=1024)) == []


# ---------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------

GOOD_MODEL = """
name = "tiny"
num_layers = 4
hidden_size = 64
num_attention_heads = 4
num_kv_heads = 4
head_dim = 16
ffn_hidden_size = 256
vocab_size = 1000
"""


def test_load_model_from_path(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(GOOD_MODEL)
    model = load_model(path)
    assert model.hidden_size == 64
    assert model.v_head_dim == 16
    assert load_model(str(path)) == model


@pytest.mark.parametrize(
    "text,field,expected",
    [
        (GOOD_MODEL.replace("hidden_size = 64", 'hidden_size = "64"'), "hidden_size", "an integer"),
        (GOOD_MODEL.replace("hidden_size = 64", "hidden_size = 64.5"), "hidden_size", "an integer"),
        (GOOD_MODEL + "gated_mlp = 1\n", "gated_mlp", "true or false"),
        (GOOD_MODEL.replace("vocab_size = 1000\n", ""), "vocab_size", "an integer"),
        (GOOD_MODEL + "hiden = 3\n", "hiden", "expected one of"),
        (GOOD_MODEL.replace("num_layers = 4", "num_layers = 0"), "num_layers", "positive"),
    ],
)
def test_load_model_bad_field(tmp_path, text, field, expected):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError) as error:
        load_model(path)
    message = str(error.value)
    assert str(path) in message
    assert repr(field) in message
    assert expected in message


def test_load_model_invalid_toml(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("name = \n")
    with pytest.raises(ValueError, match="invalid TOML"):
        load_model(path)


def test_load_unknown_names():
    with pytest.raises(FileNotFoundError, match="llama-2-70b"):
        load_model("llama-9")
    with pytest.raises(FileNotFoundError, match="h100-80gb"):
        load_gpu("tpu")


def test_gpu_specs():
    h100 = load_gpu("h100-80gb")
    assert h100.memory_bytes == 80e9
    assert h100.bf16_flops == pytest.approx(989.4e12)
    assert load_gpu("h200-141gb").memory_bytes == 141e9
    assert load_gpu("a100-80gb").bf16_flops == 312e12
    for name in available_specs("hardware"):
        gpu = load_gpu(name)
        assert gpu.source
        assert gpu.nvlink_bandwidth > gpu.internode_bandwidth


def test_make_cluster_rejects_partial_node():
    with pytest.raises(ValueError, match="whole number of nodes"):
        make_cluster(load_gpu("h100-80gb"), 6, 8)
    assert make_cluster(load_gpu("h100-80gb"), 16, 8) == ClusterSpec(load_gpu("h100-80gb"), 16, 8)


# ---------------------------------------------------------------------------
# Exercise 3
# ---------------------------------------------------------------------------


def test_exercise_3_settings():
    settings = exercise_3_settings()
    assert settings.seq_len == 4096
    assert settings.global_batch * settings.seq_len == 4 * 1024 * 1024
    assert settings.precision == "bf16"
    model, cluster, _ = exercise_3_problem()
    assert model.name == "llama-2-70b"
    assert (cluster.num_gpus, cluster.gpus_per_node, cluster.gpu.memory_bytes) == (64, 8, 80e9)


