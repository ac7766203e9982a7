"""A pipeline-parallel training step on real processes: model, stages, per-rank loop.

The model is a tiny GPT-style transformer (token and position embedding,
``num_layers`` pre-norm blocks with causal self-attention and an MLP, a final
layer norm and a language-model head). It is cut into ``P * v`` virtual
stages. Virtual stage ``s = chunk * P + pp_rank`` owns a contiguous slice of
the blocks. Stage 0 also owns the embedding, and the last stage owns the head
and computes the loss.

Each rank runs the action list that :mod:`.schedules` gives it, so the same
loop serves GPipe, 1F1B, interleaved 1F1B and ZB-H1:

- ``F``: receive the input activation from virtual stage ``s - 1`` (stage 0
  reads the tokens), run the stage, stash the input and output, send the
  output to stage ``s + 1`` (the last stage computes the loss instead).
- ``B``: receive the output gradient from stage ``s + 1`` (the last stage
  starts from its loss), backpropagate, send the input gradient to stage
  ``s - 1``. When the rank's list also has a ``W`` for the same microbatch and
  chunk, ``B`` computes only the input gradient and keeps the stash.
- ``W``: compute the parameter gradients from the kept stash and free it.

The loss of each microbatch is scaled by ``1 / M``, so the gradients summed
over the microbatches equal those of the mean loss over the whole batch.

The model, the partition, :class:`RankContext` (transport, stash accounting,
timings) and the single-process reference are given. The learner writes
:func:`forward_pass`, :func:`backward_pass`, :func:`weight_pass` and
:func:`run_step`. Set the logger of this module to DEBUG to trace every send
and receive.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .schedules import BACKWARD, FORWARD, WEIGHT, Action

logger = logging.getLogger(__name__)

ACTIVATION = 0
GRADIENT = 1


# ---------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------


class ModelConfig(NamedTuple):
    """Sizes of the tiny GPT and of one microbatch.

    ``seq_len`` is in tokens and ``microbatch_size`` in sequences; ``dtype`` is
    ``"float64"`` (exact gradient checks) or ``"float32"``. ``seed`` fixes the
    initial weights.
    """

    vocab_size: int = 64
    seq_len: int = 16
    d_model: int = 32
    num_heads: int = 4
    num_layers: int = 8
    microbatch_size: int = 2
    dtype: str = "float64"
    seed: int = 0


def check_config(config: ModelConfig) -> None:
    """Raise ValueError naming the first field of ``config`` that is invalid."""
    for name in ("vocab_size", "seq_len", "d_model", "num_heads", "num_layers",
                 "microbatch_size"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if config.d_model % config.num_heads:
        raise ValueError(
            f"d_model ({config.d_model}) must be a multiple of num_heads ({config.num_heads})")
    if config.dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {config.dtype!r}")


class Embedding(nn.Module):
    """Token plus learned position embedding: ``(b, T)`` ids to ``(b, T, d)``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.token = nn.Embedding(config.vocab_size, config.d_model)
        self.position = nn.Embedding(config.seq_len, config.d_model)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.token(tokens) + self.position(positions)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position ``t`` attends to positions ``<= t``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        head_size = d // self.num_heads
        q, k, v = self.qkv(x).split(d, dim=2)
        # (b, nh, T, hs)
        q = q.view(b, t, self.num_heads, head_size).transpose(1, 2)
        k = k.view(b, t, self.num_heads, head_size).transpose(1, 2)
        v = v.view(b, t, self.num_heads, head_size).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(head_size)
        future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        weights = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
        y = (weights @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(y)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.fc = nn.Linear(config.d_model, 4 * config.d_model)
        self.out = nn.Linear(4 * config.d_model, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class Head(nn.Module):
    """Final layer norm and the language-model head: ``(b, T, d)`` to logits ``(b, T, V)``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln = nn.LayerNorm(config.d_model)
        self.lm = nn.Linear(config.d_model, config.vocab_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm(self.ln(x))


def build_layers(config: ModelConfig) -> nn.ModuleDict:
    """Build the whole model as named layers ``embed``, ``blocks.0`` .. , ``head``.

    Weights are drawn from a generator seeded with ``config.seed``: matrices
    and embeddings from N(0, 0.02^2), biases zero, layer-norm scales one. Every
    process that calls this with the same config gets the same weights.
    """
    check_config(config)
    layers = nn.ModuleDict()
    layers["embed"] = Embedding(config)
    layers["blocks"] = nn.ModuleList(Block(config) for _ in range(config.num_layers))
    layers["head"] = Head(config)

    generator = torch.Generator().manual_seed(config.seed)
    with torch.no_grad():
        for name, param in layers.named_parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.02, generator=generator)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.fill_(1.0)
    return layers.to(getattr(torch, config.dtype))


def partition_blocks(num_layers: int, num_virtual_stages: int) -> list[range]:
    """Split block indices ``0 .. num_layers-1`` into contiguous, balanced slices.

    Slice ``s`` goes to virtual stage ``s``; the first ``num_layers % n``
    slices get one block more. Raises ValueError when a stage would get no
    block.
    """
    if num_virtual_stages < 1:
        raise ValueError(f"num_virtual_stages must be >= 1, got {num_virtual_stages}")
    if num_layers < num_virtual_stages:
        raise ValueError(
            f"num_layers ({num_layers}) must be >= num_stages * num_chunks "
            f"({num_virtual_stages}) so that every virtual stage holds a block")
    base, extra = divmod(num_layers, num_virtual_stages)
    slices, start = [], 0
    for s in range(num_virtual_stages):
        size = base + (1 if s < extra else 0)
        slices.append(range(start, start + size))
        start += size
    return slices


class StageModule(nn.Module):
    """The layers of one virtual stage, applied in order.

    ``names`` are the layer names of :func:`build_layers`, so parameter names
    of :meth:`global_named_parameters` equal those of the whole model.
    """

    def __init__(self, layers: nn.ModuleDict, names: list[str]):
        super().__init__()
        self.names = list(names)
        self.layers = nn.ModuleList(layers.get_submodule(name) for name in self.names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def global_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(f"{name}.{pname}", p)
                for name, layer in zip(self.names, self.layers)
                for pname, p in layer.named_parameters()]


def layer_names(config: ModelConfig) -> list[str]:
    """Return the names of the model's layers in order: ``embed``, ``blocks.i``, ``head``."""
    return ["embed"] + [f"blocks.{i}" for i in range(config.num_layers)] + ["head"]


def stage_layer_names(config: ModelConfig, virtual_stage: int,
                      num_virtual_stages: int) -> list[str]:
    """Return the names of the layers of ``virtual_stage``, in order."""
    blocks = partition_blocks(config.num_layers, num_virtual_stages)[virtual_stage]
    names = [f"blocks.{i}" for i in blocks]
    if virtual_stage == 0:
        names.insert(0, "embed")
    if virtual_stage == num_virtual_stages - 1:
        names.append("head")
    return names


def microbatch_loss(logits: torch.Tensor, targets: torch.Tensor,
                    num_microbatches: int) -> torch.Tensor:
    """Mean next-token cross entropy of one microbatch, divided by ``M``."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                           targets.reshape(-1)) / num_microbatches


def make_batch(config: ModelConfig, num_microbatches: int,
               seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(tokens, targets)``, int64 tensors of shape ``(M, b, T)``.

    Tokens are uniform random ids from a generator seeded with ``seed``;
    targets are the same sequences shifted by one position.
    """
    generator = torch.Generator().manual_seed(seed)
    shape = (num_microbatches, config.microbatch_size, config.seq_len + 1)
    sequence = torch.randint(0, config.vocab_size, shape, generator=generator)
    return sequence[..., :-1].contiguous(), sequence[..., 1:].contiguous()


def make_optimizer(name: str, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Return ``torch.optim.SGD`` or ``torch.optim.Adam`` over ``params`` (``name`` "sgd" or "adam")."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {name!r}")


class ReferenceResult(NamedTuple):
    """A single-process run: per-step losses, last step's gradients, final weights.

    Arrays are keyed by the parameter names of :func:`build_layers`.
    """

    losses: list[float]
    gradients: dict[str, np.ndarray]
    parameters: dict[str, np.ndarray]


def reference_run(config: ModelConfig, num_microbatches: int, steps: int = 1,
                  optimizer: str = "sgd", lr: float = 0.1, data_seed: int = 0) -> ReferenceResult:
    """Train the whole model in one process, as the pipeline should.

    Step ``k`` uses ``make_batch(config, M, data_seed + k)``; its loss is the
    sum over microbatches of :func:`microbatch_loss`. ``gradients`` are those
    of the last step, before its optimizer update.
    """
    layers = build_layers(config)
    model = StageModule(layers, layer_names(config))
    named = model.global_named_parameters()
    opt = make_optimizer(optimizer, [p for _, p in named], lr)
    losses: list[float] = []
    gradients: dict[str, np.ndarray] = {}
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        tokens, targets = make_batch(config, num_microbatches, data_seed + step)
        total = 0.0
        for mb in range(num_microbatches):
            loss = microbatch_loss(model(tokens[mb]), targets[mb], num_microbatches)
            loss.backward()
            total += loss.item()
        losses.append(total)
        gradients = {name: p.grad.detach().numpy().copy() for name, p in named}
        opt.step()
    parameters = {name: p.detach().numpy().copy() for name, p in named}
    return ReferenceResult(losses, gradients, parameters)


def reference_gradients(config: ModelConfig, num_microbatches: int,
                        data_seed: int = 0) -> dict[str, np.ndarray]:
    """Return the gradients of one single-process step, keyed by parameter name."""
    return reference_run(config, num_microbatches, 1, data_seed=data_seed).gradients


# ---------------------------------------------------------------------------
# one rank's state: stages, transport, stash and timings
# ---------------------------------------------------------------------------


def message_tag(kind: int, microbatch: int, virtual_stage: int,
                num_microbatches: int, num_virtual_stages: int) -> int:
    """Return the tag of one point-to-point message.

    ``kind`` is :data:`ACTIVATION` or :data:`GRADIENT`; ``virtual_stage`` is
    the stage that *receives* the tensor. Each message of a step gets its own
    tag, so gloo pairs every send with the matching receive whatever order
    the two ranks post them in. NCCL ignores tags (see :class:`RankContext`).
    """
    return (kind * num_virtual_stages + virtual_stage) * num_microbatches + microbatch


class RankContext:
    """Everything one rank needs to run its action list.

    Attributes: ``pp_rank``, ``num_stages`` (P), ``num_chunks`` (v),
    ``num_microbatches`` (M), ``config``, ``device``, ``stages`` (chunk to
    :class:`StageModule`), ``stash`` (``(microbatch, chunk)`` to whatever the
    loop keeps between passes), ``peak_stash`` and ``timings``.

    Point-to-point messages go through :meth:`send_tensor` and
    :meth:`recv_tensor`. A message to the rank itself (``P = 1``) is handed
    over in memory. With gloo all messages share the default group, and their
    tags distinguish them. NCCL ignores tags and matches sends and receives
    in the order each rank posts them. With NCCL, each (sender, receiver,
    kind) channel therefore gets its own two-rank group, and the messages of
    one channel must be posted in the same order on both sides. The schedules
    of :mod:`.schedules` meet that because every rank runs a chunk's
    forwards, and its backwards, in the same microbatch order.

    NOTE: the NCCL path has not been run on GPUs yet; the gloo path is tested.
    """

    def __init__(self, config: ModelConfig, pp_rank: int, num_stages: int, num_chunks: int,
                 num_microbatches: int, device: torch.device,
                 report: Callable[[str], None] | None = None,
                 channel_groups: dict[tuple[int, int, int], Any] | None = None):
        self.config = config
        self.pp_rank = pp_rank
        self.num_stages = num_stages
        self.num_chunks = num_chunks
        self.num_microbatches = num_microbatches
        self.device = device
        self.num_virtual_stages = num_stages * num_chunks
        layers = build_layers(config)
        self.stages: dict[int, StageModule] = {}
        for chunk in range(num_chunks):
            names = stage_layer_names(config, self.virtual_stage(chunk), self.num_virtual_stages)
            self.stages[chunk] = StageModule(layers, names).to(device)
        self.stash: dict[tuple[int, int], Any] = {}
        self.peak_stash = 0
        self.timings: list[tuple[Action, float, float]] = []
        self._report = report
        self._channel_groups = channel_groups or {}
        self._pending_sends: list[tuple[Any, torch.Tensor]] = []
        self._mailbox: dict[int, torch.Tensor] = {}
        self._t0 = time.perf_counter()
        self._last_arrival = 0.0
        self._last_done = "nothing"

    # -- layout ----------------------------------------------------------

    def virtual_stage(self, chunk: int) -> int:
        """Return the virtual stage of this rank's ``chunk``: ``chunk * P + pp_rank``."""
        return chunk * self.num_stages + self.pp_rank

    def rank_of(self, virtual_stage: int) -> int:
        """Return the rank that owns ``virtual_stage``."""
        return virtual_stage % self.num_stages

    def is_first(self, virtual_stage: int) -> bool:
        return virtual_stage == 0

    def is_last(self, virtual_stage: int) -> bool:
        return virtual_stage == self.num_virtual_stages - 1

    def tag(self, kind: int, microbatch: int, virtual_stage: int) -> int:
        """:func:`message_tag` of a message that ``virtual_stage`` receives."""
        return message_tag(kind, microbatch, virtual_stage,
                           self.num_microbatches, self.num_virtual_stages)

    def parameters(self, chunk: int | None = None) -> list[nn.Parameter]:
        """Return the parameters of one chunk, or of every chunk of this rank."""
        chunks = self.stages if chunk is None else [chunk]
        return [p for c in chunks for p in self.stages[c].parameters()]

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [item for c in sorted(self.stages) for item in self.stages[c].global_named_parameters()]

    def activation_shape(self) -> tuple[int, int, int]:
        """Return the shape ``(b, T, d)`` of every activation and gradient sent between stages."""
        return (self.config.microbatch_size, self.config.seq_len, self.config.d_model)

    # -- stash accounting -------------------------------------------------

    def stash_push(self, key: tuple[int, int], value: Any) -> None:
        """Stash ``value`` for ``(microbatch, chunk)`` and update ``peak_stash``."""
        if key in self.stash:
            raise RuntimeError(f"rank {self.pp_rank}: microbatch {key[0]} chunk {key[1]} is already stashed")
        self.stash[key] = value
        self.peak_stash = max(self.peak_stash, len(self.stash))

    def stash_pop(self, key: tuple[int, int]) -> Any:
        """Remove and return the stash of ``(microbatch, chunk)``."""
        if key not in self.stash:
            raise RuntimeError(f"rank {self.pp_rank}: nothing stashed for microbatch {key[0]} chunk {key[1]}")
        return self.stash.pop(key)

    # -- timing and progress ----------------------------------------------

    def clock(self) -> float:
        """Return seconds since :meth:`start_step`, after waiting for queued CUDA work."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - self._t0

    def start_step(self) -> None:
        """Reset the clock, the timings and the stash counter for a new step."""
        self.timings = []
        self.peak_stash = max(self.peak_stash, len(self.stash))
        self._t0 = time.perf_counter()
        self._last_arrival = 0.0

    def record(self, action: Action, start: float, end: float) -> None:
        """Record that ``action`` ran from ``start`` to ``end`` (seconds, :meth:`clock`).

        A receive that finished after ``start`` moves the start to its
        arrival, so the interval covers compute time only.
        """
        start = max(start, self._last_arrival)
        self.timings.append((action, start, end))
        self._last_done = str(action)
        self.progress("running")

    def progress(self, state: str) -> None:
        """Tell the launcher, if it listens, the last finished action and ``state``."""
        if self._report is not None:
            self._report(f"last completed action {self._last_done}; {state}")

    # -- point-to-point ---------------------------------------------------

    def _group(self, src: int, dst: int, kind: int) -> Any:
        return self._channel_groups.get((src, dst, kind))

    def send_tensor(self, tensor: torch.Tensor, dst_rank: int, tag: int, what: str,
                    blocking: bool = False) -> None:
        """Send ``tensor`` to ``dst_rank`` under ``tag``; ``what`` names it in logs.

        The send is posted with ``isend`` and completes in the background;
        :meth:`finish_sends` waits for the rest. ``blocking=True`` waits here,
        which deadlocks when the receiver is itself blocked in a send to us.
        """
        tensor = tensor.detach().contiguous()
        if dst_rank == self.pp_rank:
            self._mailbox[tag] = tensor
            return
        kind = tag // (self.num_virtual_stages * self.num_microbatches)
        logger.debug("rank %s: send %s to rank %s (tag %s)", self.pp_rank, what, dst_rank, tag)
        work = dist.isend(tensor, dst=dst_rank, group=self._group(self.pp_rank, dst_rank, kind), tag=tag)
        if blocking:
            self.progress(f"blocked in send of {what} to rank {dst_rank} (tag {tag})")
            work.wait()
            self.progress("running")
            return
        self._pending_sends.append((work, tensor))
        self._pending_sends = [(w, t) for w, t in self._pending_sends if not w.is_completed()]

    def recv_tensor(self, src_rank: int, tag: int, what: str) -> torch.Tensor:
        """Receive an activation-shaped tensor from ``src_rank`` under ``tag``; blocks until it arrives."""
        if src_rank == self.pp_rank:
            if tag not in self._mailbox:
                raise RuntimeError(f"rank {self.pp_rank}: {what} was never sent (tag {tag})")
            return self._mailbox.pop(tag)
        buffer = torch.empty(self.activation_shape(), dtype=getattr(torch, self.config.dtype),
                             device=self.device)
        kind = tag // (self.num_virtual_stages * self.num_microbatches)
        logger.debug("rank %s: recv %s from rank %s (tag %s)", self.pp_rank, what, src_rank, tag)
        work = dist.irecv(buffer, src=src_rank, group=self._group(src_rank, self.pp_rank, kind), tag=tag)
        self.progress(f"blocked in receive of {what} from rank {src_rank} (tag {tag})")
        work.wait()
        self._last_arrival = self.clock()
        self.progress("running")
        logger.debug("rank %s: received %s from rank %s (tag %s)", self.pp_rank, what, src_rank, tag)
        return buffer

    def finish_sends(self) -> None:
        """Wait until every posted send has completed."""
        self.progress("blocked in waiting for its sends to complete")
        for work, _ in self._pending_sends:
            work.wait()
        self._pending_sends = []
        self.progress("running")


# ---------------------------------------------------------------------------
# the per-rank execution loop (learner's part)
# ---------------------------------------------------------------------------


def forward_pass(ctx: RankContext, action: Action, tokens: torch.Tensor,
                 targets: torch.Tensor) -> torch.Tensor | None:
    """Run ``F`` of ``action.microbatch`` on ``action.chunk``; return the loss on the last stage.

    ``tokens`` and ``targets`` are the whole step's data, shape ``(M, b, T)``.
    Stage 0 reads ``tokens[microbatch]``; any other stage receives its input
    from stage ``s - 1``. The input and the output (the scaled loss on the last
    stage) are stashed under ``(microbatch, chunk)``; the output goes to stage
    ``s + 1``. Returns the detached loss on the last stage, else None.
    """
    mb, chunk = action.microbatch, action.chunk
    stage = ctx.virtual_stage(chunk)
    # Hint: the receiving stage's id goes into the tag on both sides.
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")


def backward_pass(ctx: RankContext, action: Action, input_grad_only: bool) -> None:
    """Run ``B`` of ``action.microbatch`` on ``action.chunk``.

    Receives the output gradient from stage ``s + 1`` (the last stage starts
    from its stashed loss) and sends the input gradient to stage ``s - 1``.
    With ``input_grad_only`` (zero-bubble schedules) the parameter gradients
    are left to :func:`weight_pass`, which needs the stash, so it stays.
    Otherwise parameter gradients accumulate into ``.grad`` and the stash is
    freed.
    """
    mb, chunk = action.microbatch, action.chunk
    stage = ctx.virtual_stage(chunk)
    # Hint: torch.autograd.grad(out, x, grad_out, retain_graph=True) gives the
    # input gradient alone and keeps the graph for the weight pass.
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")


def weight_pass(ctx: RankContext, action: Action) -> None:
    """Run ``W``: add the parameter gradients of one microbatch and chunk to ``.grad``, free the stash."""
    mb, chunk = action.microbatch, action.chunk
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")


def run_step(ctx: RankContext, actions: list[Action], tokens: torch.Tensor,
             targets: torch.Tensor) -> float:
    """Run one training step's ``actions`` on this rank and return the summed loss.

    Calls :meth:`RankContext.record` with each action's start and end (from
    :meth:`RankContext.clock`) and :meth:`RankContext.finish_sends` at the
    end. The loss is the sum of the scaled microbatch losses on the rank that
    owns the last virtual stage, and 0.0 on the other ranks. The optimizer step is the
    caller's.
    """
    split = {(a.microbatch, a.chunk) for a in actions if a.kind == WEIGHT}
    # Hint: dispatch on action.kind; a B whose (microbatch, chunk) is in
    # `split` computes the input gradient only.
    # YOUR CODE HERE
    raise NotImplementedError("replace this line with your implementation")
