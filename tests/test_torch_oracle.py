"""Our schedules against torch.distributed.pipelining's, as an independent oracle.

Multi-stage torch schedules build their per-rank order (``pipeline_order``)
in the constructor, so stand-in stage objects are enough. The single-stage
GPipe and 1F1B classes order their work inside the step loop, so that loop
runs for real against a stage that records each call instead of computing.
Where both define a schedule the orders must be identical; torch's 1F1B
rejects M < P. With one chunk per rank, torch's ``ScheduleInterleavedZeroBubble``
gives the ZB-H1 order.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pipelining = pytest.importorskip("torch.distributed.pipelining.schedules")

from reference.schedules import Action, gpipe, interleaved_1f1b, one_f_one_b, zero_bubble_h1  # noqa: E402
from reference.simulator import simulate  # noqa: E402

KIND = {"F": "F", "B": "B", "I": "B", "W": "W"}


class RecordingStage:
    """The parts of a PipelineStage that a single-stage schedule calls, recording F and B."""

    def __init__(self, num_stages: int, stage_index: int):
        self.num_stages = num_stages
        self.stage_index = stage_index
        self.is_first = stage_index == 0
        # No stage computes a loss: the loss function only switches backward passes on.
        self.is_last = False
        self.has_backward = True
        self.device = "cpu"
        self.actions: list[Action] = []

    def forward_one_chunk(self, fwd_chunk_id, *args, **kwargs):
        self.actions.append(Action("F", fwd_chunk_id))

    def backward_one_chunk(self, bwd_chunk_id, *args, **kwargs):
        self.actions.append(Action("B", bwd_chunk_id))

    def _no_ops(self, *args, **kwargs):
        return []

    get_fwd_recv_ops = get_fwd_send_ops = get_bwd_recv_ops = get_bwd_send_ops = _no_ops
    _get_init_p2p_neighbors_ops = _no_ops

    def _nothing(self, *args, **kwargs):
        return None

    _prepare_forward_infra = _prepare_backward_infra = perform_reduce_grad = _nothing
    clear_runtime_states = scale_grads = _nothing


def torch_single_stage_order(cls, num_stages: int, num_microbatches: int) -> list[list[Action]]:
    schedule = []
    for rank in range(num_stages):
        stage = RecordingStage(num_stages, rank)
        runner = cls(stage, num_microbatches, loss_fn=lambda output, target: output)
        # Skip the stage set-up (metadata exchange with neighbours): the
        # recording stage has no tensors and no process group.
        runner._stage_forward_initialized = runner._stage_backward_initialized = True
        runner._step_microbatches([()] * num_microbatches, [{}] * num_microbatches)
        schedule.append(stage.actions)
    return schedule


def torch_multi_stage_order(cls, num_stages: int, num_microbatches: int, num_chunks: int):
    stages = [SimpleNamespace(group_size=num_stages, group_rank=0, stage_index=c * num_stages,
                              num_stages=num_stages * num_chunks, is_first=c == 0,
                              is_last=False, submod=None)
              for c in range(num_chunks)]
    order = cls(stages, num_microbatches).pipeline_order
    schedule = []
    for rank in range(num_stages):
        actions = []
        for item in order[rank]:
            if item is None:
                continue
            kind = KIND.get(getattr(item.computation_type, "value", item.computation_type))
            if kind is None:
                continue
            actions.append(Action(kind, item.microbatch_index, item.stage_index // num_stages))
        schedule.append(actions)
    return schedule


@pytest.mark.parametrize("P", [1, 2, 3, 4, 6])
@pytest.mark.parametrize("M", [1, 2, 4, 5, 8, 12])
def test_gpipe_matches_torch(P, M):
    assert gpipe(P, M) == torch_single_stage_order(pipelining.ScheduleGPipe, P, M)


@pytest.mark.parametrize("P", [1, 2, 3, 4, 6])
@pytest.mark.parametrize("M", [1, 2, 4, 5, 8, 12])
def test_one_f_one_b_matches_torch(P, M):
    if M < P:
        with pytest.raises(ValueError):
            torch_single_stage_order(pipelining.Schedule1F1B, P, M)
        return
    assert one_f_one_b(P, M) == torch_single_stage_order(pipelining.Schedule1F1B, P, M)


@pytest.mark.parametrize("P", [1, 2, 3, 4])
@pytest.mark.parametrize("v", [2, 3])
@pytest.mark.parametrize("M", [1, 2, 3, 4, 8, 12])
def test_interleaved_matches_torch(P, M, v):
    if M >= P and M % P:
        pytest.skip("M is neither below P nor a multiple of it: only torch defines this case")
    ours = interleaved_1f1b(P, M, v)
    theirs = torch_multi_stage_order(pipelining.ScheduleInterleaved1F1B, P, M, v)
    assert ours == theirs


@pytest.mark.parametrize("P", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("M", [1, 2, 3, 4, 5, 8, 10])
def test_zero_bubble_h1_matches_torch_single_chunk(P, M):
    if M > P and M % (M // P):
        pytest.skip("torch's zero-bubble schedule needs M to be a multiple of its round count")
    ours = zero_bubble_h1(P, M)
    theirs = torch_multi_stage_order(pipelining.ScheduleInterleavedZeroBubble, P, M, 1)
    assert ours == theirs


@pytest.mark.parametrize("P, M", [(2, 3), (4, 8), (4, 2)])
def test_reversed_gpipe_backward_order_times_like_torch(P, M):
    # The chapter draws GPipe's backwards last-first; torch runs them first-first.
    # Both orders are right, and the simulator sees no difference.
    reversed_order = [[a for a in actions if a.kind == "F"] + [a for a in reversed(actions) if a.kind == "B"]
                      for actions in gpipe(P, M)]
    theirs = torch_single_stage_order(pipelining.ScheduleGPipe, P, M)
    assert reversed_order != theirs or M == 1
    for times in ((1.0, 2.0, 0.0), (2.0, 1.0, 0.0)):
        a, b = simulate(reversed_order, *times), simulate(theirs, *times)
        assert a.makespan == pytest.approx(b.makespan)
        assert a.peak_activations == b.peak_activations
