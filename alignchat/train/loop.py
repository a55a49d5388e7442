"""The one training loop every stage shares (pretraining, SFT, reward model, DPO), and the run directory
that it and PPO keep their checkpoints, logs and settings in.

Notable choices:
- A stage supplies a model, a data source and a `loss_fn(model, batch) -> LossOutput`. The loss is a
  *sum* over `weight` units (target tokens, comparison pairs, ...). Gradients of all micro-batches on all
  ranks are summed and divided once by the global weight, so gradient accumulation and any number of
  processes give exactly the mean over the global batch, even when ranks hold different token counts.
- AdamW (no decay on norms and biases), linear warmup then cosine decay to `min_lr_ratio`·lr, global-norm
  clipping, bf16 autocast on CUDA, optional `torch.compile` (in place, so parameter names don't change).
- Distributed: under `torchrun` the same command runs DDP (NCCL on GPUs, gloo on CPUs); `fsdp=true`
  shards every block with FSDP2 (`torch.distributed.fsdp.fully_shard`) instead. PyTorch's engine, not ours.
- `RunDir` is the run directory both `Trainer` and `ppo.PPOTrainer` use, so checkpointing, pruning,
  resume, metrics truncation, logging, the progress bar, the LR schedule and Ctrl-C exist once.
  `out_dir/step-NNNNNN/` holds what the stage writes (a checkpoint directory; PPO: actor/ and critic/)
  plus `train_state.pt` (optimizer, step, data position, RNG states incl. CUDA); it is built under a
  temporary name and renamed, and `out_dir/latest.json` is replaced atomically only after that, so a run
  killed at any instant resumes from the last complete checkpoint and repeats exactly the same steps.
- Metrics go to `out_dir/metrics.jsonl` (one JSON object per line; on resume, lines past the checkpoint
  and end-of-run summaries are dropped so the log reads as one uninterrupted run) and to a tqdm progress
  line: loss, validation loss, bits per byte, tokens/s and MFU (from `alignchat.config.flops_per_token`;
  on CPUs the peak is a measured fp32 GEMM rate, so CPU MFU is relative to what this machine's matmul can do).
- Every training verb takes its settings one way (`add_stage_arguments`/`stage_settings`, on top of
  `alignchat.settings`): defaults, or with `--resume` the run's saved settings, then `--config`, then the
  command line; and ends one way (`finish_run`: `final/`, the `done:` line, the process group left).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import flops_per_token
from ..errors import UserError
from ..fetch import atomic_write_text
from ..settings import add_settings_arguments, given_settings, setting, settings_from_args, settings_from_dict

IGNORE_INDEX = -100


@dataclass
class TrainConfig:
    """Optimisation, schedule, logging and checkpoint settings shared by every stage."""

    out_dir: str = setting("runs/train", "run directory: run.json, metrics.jsonl, step-N/ checkpoints, final/",
                           flag="out")
    max_steps: int = setting(1000, "optimizer steps")
    batch_size: int = setting(8, "sequences per micro-batch per process")
    grad_accum: int = setting(1, "micro-batches per optimizer step")
    seq_len: int = setting(256, "tokens per training sequence")
    lr: float = setting(3e-4, "peak learning rate")
    min_lr_ratio: float = setting(0.1, "the cosine schedule decays to lr·min_lr_ratio at max_steps")
    warmup_steps: int = setting(100, "steps of linear learning-rate warmup")
    weight_decay: float = setting(0.1, "AdamW weight decay, on matrices only (norms and biases are not decayed)")
    beta1: float = setting(0.9, "AdamW β1")
    beta2: float = setting(0.95, "AdamW β2")
    grad_clip: float = setting(1.0, "global gradient-norm clip (0 = off)")
    precision: str = setting("auto", "auto (bf16 autocast on CUDA, fp32 on CPU), bf16 or fp32",
                             choices=("auto", "bf16", "fp32"))
    compile: bool = setting(False, "torch.compile the model (in place: parameter names do not change)")
    fsdp: bool = setting(False, "shard with FSDP2 instead of DDP (under torchrun)")
    device: str = setting("auto", "auto (cuda when available, else cpu), cpu, cuda or cuda:N")
    seed: int = setting(1337, "random seed")
    log_every: int = setting(1, "write a metrics line every N steps")
    eval_every: int = setting(100, "validate every N steps (0: only at the end)")
    eval_batches: int = setting(20, "validation micro-batches per evaluation")
    save_every: int = setting(200, "checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = setting(2, "step checkpoints kept")
    sample_every: int = setting(0, "print and log text samples every N steps (0: none during training; one at "
                                   "the end where the stage has sample prompts)")
    sample_tokens: int = setting(48, "tokens per text sample")
    peak_tflops: float = setting(0.0, "per-device peak TFLOP/s for MFU (0: look the GPU up, or measure the CPU)")
    progress: bool = setting(True, "show a progress bar")


@dataclass
class LossOutput:
    """What a stage's loss function returns for one micro-batch.

    loss_sum: a scalar tensor, the loss summed over `weight` units. weight: how many units (e.g. target
    tokens). tokens: tokens the model processed (for throughput; defaults to the input size).
    metrics: extra per-batch numbers to average (by weight) into the step's log line.
    """

    loss_sum: torch.Tensor
    weight: float
    tokens: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


class DataSource(Protocol):
    def next_batch(self) -> Any: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


# --------------------------------------------------------------------------------------------------------
# distributed setup
# --------------------------------------------------------------------------------------------------------
@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str = "auto") -> torch.device:
    from ..commands.common import pick_device
    return torch.device(pick_device(name))


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); otherwise a single process."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=resolve_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def end_distributed() -> None:
    """Leave the process group, if this process joined one (the end of a stage under torchrun)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], dist_info: DistInfo) -> list[float]:
    if not dist_info.enabled:
        return values
    import torch.distributed as dist
    t = torch.tensor(values, dtype=torch.float64, device=dist_info.device)
    dist.all_reduce(t)
    return t.tolist()


def wrap_ddp(model: nn.Module, dist_info: DistInfo) -> nn.Module:
    """`DistributedDataParallel(model)` under torchrun; the model itself in one process."""
    if not dist_info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP
    ids = [dist_info.device.index] if dist_info.device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def share(n: int, dist_info: DistInfo) -> range:
    """This rank's contiguous share of n items (rank r of W takes items n·r//W to n·(r+1)//W)."""
    r, w = dist_info.rank, dist_info.world_size
    return range(n * r // w, n * (r + 1) // w)


def gather(items: list, dist_info: DistInfo) -> list:
    """Every rank's `items` (picklable), concatenated in rank order, on every rank."""
    if not dist_info.enabled:
        return list(items)
    import torch.distributed as dist
    parts: list = [None] * dist_info.world_size
    dist.all_gather_object(parts, list(items))
    return [x for part in parts for x in part]


# --------------------------------------------------------------------------------------------------------
# optimisation pieces (also usable on their own, e.g. by PPO)
# --------------------------------------------------------------------------------------------------------
@dataclass
class LRSchedule:
    """Linear warmup over `warmup_steps`, then cosine decay to `min_ratio` × the base rate at `total_steps`
    (`min_ratio=1` after no warmup: a constant rate). `apply(step)` sets every param group of each
    (optimizer, base rate) in `optimizers`."""

    warmup_steps: int
    total_steps: int
    min_ratio: float = 1.0
    optimizers: list = field(default_factory=list)

    def factor(self, step: int) -> float:
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + 0.5 * (1 - self.min_ratio) * (1 + math.cos(math.pi * progress))

    def apply(self, step: int) -> float:
        f = self.factor(step)
        for optimizer, base in self.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = base * f * group.get("lr_scale", 1.0)
        return f


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The learning rate of step `step` under `cfg`'s schedule (warmup, then cosine to lr·min_lr_ratio)."""
    return cfg.lr * LRSchedule(cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio).factor(step)


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (norm gains and biases are not decayed). A weight marked
    `no_decay` (e.g. an embedding trained on some rows, `sft.apply_trainable`) is never decayed, and one with
    an `lr_scale` gets its own undecayed group at that multiple of the rate (`LRSchedule` keeps the ratio)."""
    decay, no_decay, scaled = [], [], {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if getattr(p, "lr_scale", 1.0) != 1.0:
            scaled.setdefault(float(p.lr_scale), []).append(p)
        else:
            (decay if p.dim() >= 2 and not getattr(p, "no_decay", False) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    groups += [{"params": ps, "weight_decay": 0.0, "lr_scale": k, "lr": cfg.lr * k} for k, ps in scaled.items()]
    extra = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **extra)


def autocast_context(cfg: TrainConfig, device: torch.device):
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise UserError(f"precision must be auto, bf16 or fp32, not {precision!r}")
    return contextlib.nullcontext()


_GPU_PEAK_BF16 = {  # dense bf16 tensor-core TFLOP/s per device
    "H200": 989.0, "H100": 989.0, "GH200": 989.0, "A100": 312.0, "A800": 312.0, "H800": 989.0,
    "L40S": 362.0, "L40": 181.0, "L4": 121.0, "A10": 125.0, "A6000": 155.0, "4090": 165.0, "3090": 71.0,
    "V100": 125.0, "T4": 65.0,
}
_cpu_peak_cache: dict[int, float] = {}


def measured_cpu_peak_flops(n: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of a large fp32 matmul on this CPU with the current thread count: our CPU 'peak'."""
    threads = torch.get_num_threads()
    if threads not in _cpu_peak_cache:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
        _cpu_peak_cache[threads] = 2 * n**3 / best
    return _cpu_peak_cache[threads]


def peak_flops(device: torch.device, override_tflops: float = 0.0) -> float | None:
    if override_tflops > 0:
        return override_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in _GPU_PEAK_BF16.items():
            if key in name:
                return tflops * 1e12
        return None
    if device.type == "cpu":
        return measured_cpu_peak_flops()
    return None


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def unpack_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(inputs, targets, forward kwargs) of a language-model batch: `(inputs, targets)` or a dict with
    `input_ids`, `targets` and optionally `positions` and `attn_mask` (packed or padded SFT rows)."""
    if isinstance(batch, dict):
        kwargs = {k: batch[k] for k in ("positions", "attn_mask") if batch.get(k) is not None}
        return batch["input_ids"], batch["targets"], kwargs
    inputs, targets = batch
    return inputs, targets, {}


def is_sharded(model: nn.Module) -> bool:
    """Whether `model` (or the module DDP wraps) is FSDP-sharded: its output layer then runs only inside
    the module's forward, so `logits_from_hidden` cannot be applied from outside."""
    inner = getattr(model, "module", model)  # DDP wraps; FSDP2 modules are themselves sharded
    return any(type(c).__name__.startswith("FSDP") for c in (model, inner))


def lm_loss(model: nn.Module, batch: Any) -> LossOutput:
    """Next-token cross-entropy, summed over targets that are not IGNORE_INDEX.

    `batch` is what `unpack_batch` reads. When some targets are ignored (SFT: only assistant tokens
    count), logits are computed only where there is a target: the vocabulary projection is a large part
    of a small model's cost, and of its memory."""
    inputs, targets, kwargs = unpack_batch(batch)
    keep = targets != IGNORE_INDEX
    inner = getattr(model, "module", model)
    sharded = is_sharded(model)
    if hasattr(inner, "logits_from_hidden") and not sharded and not bool(keep.all()):
        hidden = model(inputs, return_hidden=True, **kwargs)
        logits = inner.logits_from_hidden(hidden[keep])
        loss = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
    else:
        logits = model(inputs, **kwargs)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")
    return LossOutput(loss, int(keep.sum()), tokens=inputs.numel())


# --------------------------------------------------------------------------------------------------------
# RNG state (exact resume)
# --------------------------------------------------------------------------------------------------------
def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------------------
# checkpoint bookkeeping
# --------------------------------------------------------------------------------------------------------
LATEST = "latest.json"
TRAIN_STATE = "train_state.pt"


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The last complete step checkpoint of a run directory, or None."""
    path = Path(out_dir) / LATEST
    if not path.exists():
        return None
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: corrupt ({e.msg})") from e
    ckpt = Path(out_dir) / info["dir"]
    if not (ckpt / TRAIN_STATE).exists():
        raise UserError(f"{path} points at {ckpt}, which has no {TRAIN_STATE}")
    return ckpt


def load_train_state(ckpt_dir: str | Path) -> dict:
    return torch.load(Path(ckpt_dir) / TRAIN_STATE, map_location="cpu", weights_only=False)


def load_weights_into(model: nn.Module, ckpt_dir: str | Path) -> None:
    """Copy a checkpoint's model.safetensors into `model` (names are the model's own)."""
    from safetensors.torch import load_file
    state = load_file(str(Path(ckpt_dir) / "model.safetensors"))
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise UserError(f"{ckpt_dir}/model.safetensors lacks {missing[:3]}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


# --------------------------------------------------------------------------------------------------------
# the run directory (shared by Trainer and PPO)
# --------------------------------------------------------------------------------------------------------
METRICS = "metrics.jsonl"
RUN_INFO = "run.json"


class RunDir:
    """One run's directory and bookkeeping, shared by `Trainer` and `ppo.PPOTrainer`.

    `save(step, write, state)` publishes `step-NNNNNN/` (what `write(dir)` puts there, plus
    `train_state.pt` holding `state` and the RNG states), points `latest.json` at it and prunes old steps;
    `resume()` finds the latest one, restores the RNG and cuts `metrics.jsonl` back to it; `log`, `write_info`
    and `write` are the metrics log, `run.json` and messages; `loop(...)` runs the steps with the LR
    schedule, the progress bar, periodic checkpoints and a checkpoint on Ctrl-C. Only rank 0 writes;
    `save` is a barrier for all ranks."""

    def __init__(self, path: str | Path, dist_info: DistInfo, *, keep_checkpoints: int = 2,
                 progress: bool = True, desc: str = "train"):
        self.path = Path(path)
        self.dist = dist_info
        self.keep_checkpoints = keep_checkpoints
        self.progress, self.desc = progress, desc
        self.bar = None

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def barrier(self) -> None:
        if self.dist.enabled:
            import torch.distributed as dist
            dist.barrier()

    # --- checkpoints ----------------------------------------------------------------------------------
    def latest(self) -> Path | None:
        return latest_checkpoint(self.path)

    def latest_step(self) -> int | None:
        return json.loads((self.path / LATEST).read_text())["step"] if self.latest() is not None else None

    def save(self, step: int, write: Callable[[Path], None], state: dict) -> Path | None:
        """Rank 0 writes `step-NNNNNN/` under a temporary name (`write(tmp)` adds the model files), adds
        `train_state.pt`, renames it into place, then replaces `latest.json` and prunes old steps. A step
        that is already the latest on disk is not written twice."""
        if not self.is_main:
            self.barrier()
            return None
        name = f"step-{step:06d}"
        target = self.path / name
        if self.latest_step() == step:
            self.barrier()
            return target
        tmp = self.path / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        write(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        torch.save({**state, "step": step, "rng": rng_state(), "world_size": self.dist.world_size}, tmp / TRAIN_STATE)
        if target.exists():  # left by a save that was cut short: latest.json never pointed at it
            shutil.rmtree(target)
        os.replace(tmp, target)
        atomic_write_text(self.path / LATEST, json.dumps({"step": step, "dir": name}) + "\n")
        steps = sorted(p for p in self.path.glob("step-*") if p.is_dir() and p.name != name)
        for old in steps[:max(0, len(steps) + 1 - max(1, self.keep_checkpoints))]:
            shutil.rmtree(old, ignore_errors=True)
        self.barrier()
        return target

    def resume(self) -> tuple[Path, dict] | None:
        """(latest checkpoint, its train state) with the RNG restored and the log cut back; None if none."""
        ckpt = self.latest()
        if ckpt is None:
            return None
        state = load_train_state(ckpt)
        set_rng_state(state["rng"])
        if self.is_main:
            self.truncate_metrics(int(state["step"]))
        return ckpt, state

    def truncate_metrics(self, step: int) -> None:
        """Drop log lines written after `step`, and end-of-run summaries, so the log reads as one run."""
        path = self.path / METRICS
        if not path.exists():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the kill
            if isinstance(record, dict) and record.get("step", 0) <= step and not record.get("final"):
                kept.append(line)
        atomic_write_text(path, "".join(k + "\n" for k in kept))

    # --- logs -----------------------------------------------------------------------------------------
    def log(self, record: dict) -> None:
        if not self.is_main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / METRICS, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")

    def write_info(self, info: dict) -> None:
        """`run.json`: the run's settings (`settings`, which `--resume` starts from), facts about it, and the
        number of processes."""
        if self.is_main:
            self.path.mkdir(parents=True, exist_ok=True)
            info = {**info, "processes": self.dist.world_size}
            atomic_write_text(self.path / RUN_INFO, json.dumps(info, indent=2, ensure_ascii=False, default=str) + "\n")

    def write(self, message: str) -> None:
        """A message on rank 0's terminal, above the progress bar if there is one."""
        if self.is_main:
            (self.bar.write if self.bar is not None else print)(message)

    # --- the loop -------------------------------------------------------------------------------------
    def loop(self, total: int, step_fn: Callable[[], dict], *, step_of: Callable[[], int],
             save_fn: Callable[[], Any], save_every: int, schedule: LRSchedule | None = None,
             postfix: Callable[[dict], dict] | None = None) -> dict:
        """Run `step_fn` until `step_of() == total`: the LR of each step set first, the progress bar after,
        a checkpoint every `save_every` steps, one on Ctrl-C, and one at the end. Returns the last record."""
        if self.is_main and self.progress:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=step_of(), desc=self.desc, dynamic_ncols=True)
        record: dict = {}
        try:
            while step_of() < total:
                if schedule is not None:
                    schedule.apply(step_of())
                record = step_fn()
                step = step_of()
                if self.bar is not None:
                    self.bar.update(1)
                    if postfix is not None:
                        self.bar.set_postfix(postfix(record), refresh=False)
                if save_every and step % save_every == 0 and step < total:
                    save_fn()
        except KeyboardInterrupt:
            self.write(f"interrupted at step {step_of()}; saving a checkpoint to resume from")
            if step_of() > 0:
                save_fn()
            raise
        finally:
            if self.bar is not None:
                self.bar.close()
                self.bar = None
        save_fn()  # the last step (nothing is written when it is on disk already)
        return record


# --------------------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------------------
class Trainer:
    """Runs `cfg.max_steps` optimizer steps of `loss_fn` over `train_data`, with eval, samples, checkpoints.

    model: an unwrapped `nn.Module` (the trainer moves it, wraps it for DDP/FSDP and compiles it).
    train_data: a `DataSource` yielding micro-batches for *this* rank (see `alignchat.data.shards`).
    val_batches: a callable returning a fresh finite iterable of validation micro-batches for this rank.
    tokenizer / meta / stage: written into every checkpoint so it loads in `alignchat chat`.
    bytes_per_token: validation bytes per token, to report bits per byte.
    sample_fn(model, step) -> list[str]: text samples printed and logged every `sample_every` steps.
    callbacks: `fn(trainer, step, record)` after each logged step (e.g. tests, early stopping).
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, train_data: DataSource, *,
                 loss_fn: Callable[[nn.Module, Any], LossOutput] = lm_loss,
                 val_batches: Callable[[], Iterable[Any]] | None = None,
                 tokenizer=None, stage: str = "train", meta: dict | None = None,
                 bytes_per_token: float | None = None,
                 sample_fn: Callable[[nn.Module, int], list[str]] | None = None,
                 callbacks: Iterable[Callable] = (), dist_info: DistInfo | None = None,
                 run_info: dict | None = None):
        self.cfg = cfg
        self.dist = dist_info or init_distributed(cfg.device)
        self.device = self.dist.device
        self.run = RunDir(cfg.out_dir, self.dist, keep_checkpoints=cfg.keep_checkpoints, progress=cfg.progress,
                          desc=stage)
        self.out_dir = self.run.path
        self.raw_model = model.to(self.device)
        self.train_data, self.val_batches, self.loss_fn = train_data, val_batches, loss_fn
        self.tokenizer, self.stage, self.meta = tokenizer, stage, dict(meta or {})
        self.bytes_per_token, self.sample_fn = bytes_per_token, sample_fn
        self.callbacks = list(callbacks)
        self.run_info = run_info or {}
        self.step = 0
        self.tokens_seen = 0
        self.last_val: dict[str, float] = {}
        self.model = self._wrap(self.raw_model)
        self.optimizer = build_optimizer(self.model, cfg, self.device)
        self.model_cfg = getattr(self.raw_model, "cfg", None)
        self.flops_per_token = None
        if self.model_cfg is not None:
            # 6·N assumes every weight is trained; frozen weights skip their weight gradient (2·N of the 6·N)
            # and frozen blocks below the first trainable one skip the backward pass (approximated as such)
            emb = {id(p) for n, p in self.raw_model.named_parameters() if "embed_tokens" in n or "lm_head" in n}
            body = [p for p in self.raw_model.parameters() if id(p) not in emb]
            n_all = sum(p.numel() for p in body) or 1
            n_train = sum(p.numel() for p in body if p.requires_grad)
            self.flops_per_token = flops_per_token(self.model_cfg, cfg.seq_len) * (2 * n_all + 4 * n_train) / (6 * n_all)
        self.peak = peak_flops(self.device, cfg.peak_tflops)

    # --- setup --------------------------------------------------------------------------------------
    def _wrap(self, model: nn.Module) -> nn.Module:
        cfg = self.cfg
        if cfg.fsdp:
            if not self.dist.enabled:
                raise UserError("fsdp=true needs several processes: launch with torchrun --nproc_per_node=N")
            from torch.distributed.fsdp import fully_shard
            for block in getattr(getattr(model, "model", model), "layers", []):
                fully_shard(block)
            fully_shard(model)
            if cfg.compile:
                model.compile()
            return model
        if cfg.compile:
            model.compile()  # in place: state_dict names stay unprefixed
        return wrap_ddp(model, self.dist)

    def _no_sync(self, last_micro: bool):
        """Skip the gradient all-reduce on all but the last micro-batch of a step."""
        if not self.dist.enabled:
            return contextlib.nullcontext()
        if self.cfg.fsdp:
            self.model.set_requires_gradient_sync(last_micro)
            return contextlib.nullcontext()
        return contextlib.nullcontext() if last_micro else self.model.no_sync()

    # --- state --------------------------------------------------------------------------------------
    def _full_state(self) -> tuple[dict, dict]:
        """(model state, optimizer state) as full unsharded CPU tensors, on every rank."""
        if self.cfg.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return get_state_dict(self.model, self.optimizer, options=opts)
        model_state = {k: v.detach().cpu() for k, v in self.raw_model.state_dict().items()}
        return model_state, self.optimizer.state_dict()

    def save(self) -> Path | None:
        """Write `step-NNNNNN/` (checkpoint + train_state.pt) through the run directory."""
        from ..checkpoint import save_checkpoint

        model_state, optim_state = self._full_state()
        if not self.dist.is_main:
            return self.run.save(self.step, lambda d: None, {})  # the barrier
        model_for_save = self._cpu_model_from_state(model_state)
        meta = self._meta()
        state = {"tokens_seen": self.tokens_seen, "optimizer": optim_state, "data": self.train_data.state_dict(),
                 "train_config": dataclasses.asdict(self.cfg), "last_val": self.last_val}
        return self.run.save(self.step, lambda d: save_checkpoint(d, model_for_save, self.tokenizer, meta=meta),
                             state)

    def _cpu_model_from_state(self, model_state: dict) -> nn.Module:
        if not self.cfg.fsdp:
            return self.raw_model  # save_checkpoint copies its state to the CPU itself
        # FSDP: a plain CPU copy that the gathered full state is loaded into
        clone = type(self.raw_model)(self.model_cfg)
        clone.load_state_dict(model_state, strict=False)
        return clone

    def _meta(self) -> dict:
        meta = {**self.meta, "stage": self.stage, "step": self.step, "tokens_seen": self.tokens_seen}
        if self.last_val:
            meta["metrics"] = dict(self.last_val)
        return meta

    def resume(self, ckpt_dir: str | Path, state: dict) -> None:
        """Restore weights, optimizer, data position and step from a step checkpoint and its train state."""
        if self.cfg.fsdp:
            from safetensors.torch import load_file
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
            weights = load_file(str(Path(ckpt_dir) / "model.safetensors"))
            own = {k for k in self.raw_model.state_dict()}
            set_state_dict(self.model, self.optimizer,
                           model_state_dict={k: v for k, v in weights.items() if k in own},
                           optim_state_dict=state["optimizer"],
                           options=StateDictOptions(full_state_dict=True, strict=False))
        else:
            load_weights_into(self.raw_model, ckpt_dir)
            self.optimizer.load_state_dict(state["optimizer"])
        self.train_data.load_state_dict(state["data"])
        self.step, self.tokens_seen = int(state["step"]), int(state.get("tokens_seen", 0))
        self.last_val = state.get("last_val", {})

    # --- logging ------------------------------------------------------------------------------------
    def log(self, record: dict) -> None:
        self.run.log(record)

    # --- evaluation ---------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if self.val_batches is None:
            return {}
        self.model.eval()
        total, weight = 0.0, 0.0
        for batch in self.val_batches():
            batch = to_device(batch, self.device)
            with autocast_context(self.cfg, self.device):
                out = self.loss_fn(self.model, batch)
            total += float(out.loss_sum)
            weight += float(out.weight)
        total, weight = all_reduce_sum([total, weight], self.dist)
        self.model.train()
        if weight == 0:
            return {}
        result = {"val_loss": total / weight}
        if self.bytes_per_token:
            result["val_bpb"] = result["val_loss"] / math.log(2) / self.bytes_per_token
        self.last_val = result
        return result

    def samples(self) -> list[str]:
        if self.sample_fn is None or self.cfg.fsdp or not self.dist.is_main:
            return []
        self.raw_model.eval()
        try:
            return self.sample_fn(self.raw_model, self.step)
        finally:
            self.raw_model.train()

    # --- the loop -----------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """One optimizer step over `grad_accum` micro-batches; returns the step's metrics."""
        cfg = self.cfg
        lr = float(self.optimizer.param_groups[0]["lr"])  # set by the run's schedule (`lr_at`)
        loss_total, weight_total, tokens, extra = 0.0, 0.0, 0, {}
        for micro in range(cfg.grad_accum):
            batch = to_device(self.train_data.next_batch(), self.device)
            last = micro == cfg.grad_accum - 1
            with self._no_sync(last):
                with autocast_context(cfg, self.device):
                    out = self.loss_fn(self.model, batch)
                out.loss_sum.backward()
            loss_total += float(out.loss_sum.detach())
            weight_total += float(out.weight)
            tokens += out.tokens or _numel_inputs(batch)
            for k, v in out.metrics.items():
                extra[k] = extra.get(k, 0.0) + float(v) * float(out.weight)
        keys = sorted(extra)
        reduced = all_reduce_sum([loss_total, weight_total, float(tokens)] + [extra[k] for k in keys], self.dist)
        loss_total, weight_total, tokens = reduced[0], reduced[1], int(reduced[2])
        if weight_total <= 0:
            raise UserError("a training step had no target tokens (is every assistant turn truncated away?)")
        # DDP/FSDP average gradients over ranks; turn that into the sum over the global batch / global weight
        scale = self.dist.world_size / weight_total
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if self.cfg.fsdp:
            for g in grads:
                g.mul_(scale)
        elif grads:
            torch._foreach_mul_(grads, scale)
        grad_norm = float("nan")
        if cfg.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += tokens
        metrics = {"loss": loss_total / weight_total, "lr": lr, "grad_norm": grad_norm, "tokens": tokens}
        for k, v in zip(keys, reduced[3:]):
            metrics[k] = v / weight_total
        return metrics

    def fit(self, resume: bool = False) -> dict:
        """Train to `max_steps`; with `resume`, continue from `out_dir`'s latest checkpoint if there is one."""
        cfg = self.cfg
        if resume:
            found = self.run.resume()
            if found is not None:
                self.resume(*found)
                self.run.write(f"resumed from {found[0]} at step {self.step}")
            else:
                self.run.write(f"no checkpoint in {self.out_dir}; starting from scratch")
        if self.step == 0:
            seed_everything(cfg.seed + self.dist.rank)
        self.run.write_info({**self.run_info, "stage": self.stage, "train": dataclasses.asdict(cfg)})
        self.model.train()
        schedule = LRSchedule(cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio, [(self.optimizer, cfg.lr)])
        record = self.run.loop(cfg.max_steps, self._one_step, step_of=lambda: self.step, save_fn=self.save,
                               save_every=cfg.save_every, schedule=schedule, postfix=self._postfix)
        return {**record, **self.last_val}

    def _one_step(self) -> dict:
        cfg = self.cfg
        t0 = time.perf_counter()
        metrics = self.train_step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        dt = time.perf_counter() - t0
        tok_s = metrics["tokens"] / dt
        record = {"step": self.step, **metrics, "tokens_seen": self.tokens_seen, "tokens_per_s": tok_s,
                  "step_time_s": dt}
        if self.flops_per_token and self.peak:
            record["mfu"] = self.flops_per_token * tok_s / (self.peak * self.dist.world_size)
        at_end = self.step >= cfg.max_steps
        if (cfg.eval_every and self.step % cfg.eval_every == 0) or at_end:
            record.update(self.evaluate())
        if (cfg.sample_every and self.step % cfg.sample_every == 0) or (at_end and self.sample_fn):
            texts = self.samples()
            if texts:
                record["samples"] = texts
                if self.run.bar is not None:
                    self.run.write(f"--- samples at step {self.step} ---")
                    for t in texts:
                        self.run.write(repr(t))
        if self.step % cfg.log_every == 0 or at_end or "val_loss" in record:
            self.log(record)
        for cb in self.callbacks:
            cb(self, self.step, record)
        return record

    def _postfix(self, record: dict) -> dict:
        post = {"loss": f"{record['loss']:.4f}", "tok/s": f"{record['tokens_per_s']:,.0f}"}
        if self.last_val:
            post["val"] = f"{self.last_val['val_loss']:.4f}"
            if "val_bpb" in self.last_val:
                post["bpb"] = f"{self.last_val['val_bpb']:.3f}"
        if "mfu" in record:
            post["mfu"] = f"{100 * record['mfu']:.1f}%"
        return post

    def save_final(self, name: str = "final") -> Path | None:
        """Write the finished model as `out_dir/name`: a plain checkpoint directory for chat/generate/eval."""
        from ..checkpoint import save_checkpoint
        model_state, _ = self._full_state() if self.cfg.fsdp else (None, None)
        if not self.dist.is_main:
            return None
        model = self._cpu_model_from_state(model_state) if self.cfg.fsdp else self.raw_model
        target = self.out_dir / name
        if target.exists():
            shutil.rmtree(target)
        save_checkpoint(target, model, self.tokenizer, meta=self._meta())
        return target


def finish_run(trainer: Trainer, summary: dict) -> int:
    """The end of a training verb: write `out_dir/final`, print `done:` with the float metrics of
    `summary` (what `fit` returned, plus the stage's own), and leave the process group. Returns 0."""
    final = trainer.save_final()
    if trainer.dist.is_main:
        rounded = {k: round(v, 4) for k, v in summary.items() if isinstance(v, float)}
        print(f"done: {final}  {json.dumps(rounded)}")
    end_distributed()
    return 0


def _numel_inputs(batch: Any) -> int:
    if isinstance(batch, dict):
        return int(batch["input_ids"].numel())
    if isinstance(batch, (list, tuple)):
        return int(batch[0].numel())
    return 0


# --------------------------------------------------------------------------------------------------------
# the stage contract: settings from defaults, a resumed run, --config and the command line
# --------------------------------------------------------------------------------------------------------
RESUME_NOTE = ("--resume: continue the run in --out from its last checkpoint; its saved settings (run.json) "
               "replace the defaults, and --config and the command line still apply on top (e.g. a larger max_steps)")


def add_stage_arguments(parser, defaults: Any, *, reads: str, writes: str, own_section: str | None = None) -> None:
    """A training verb's command line: its settings (`alignchat.settings`) plus `--resume`."""
    add_settings_arguments(parser, defaults, reads=reads, writes=writes, own_section=own_section, notes=RESUME_NOTE)
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last checkpoint, exactly (weights, optimizer, "
                             "data position, RNG)")


def saved_settings(out_dir: str | Path) -> dict | None:
    """The settings a run directory's run.json recorded (also the layout of runs saved before `settings`)."""
    path = Path(out_dir) / RUN_INFO
    if not path.exists():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: corrupt ({e.msg})") from e
    if "settings" in info:
        return info["settings"]
    legacy: dict = {}
    for key in ("job", "config", "reward", "dpo"):
        legacy.update(info.get(key) or {})
    for key in ("model", "train"):
        if isinstance(info.get(key), dict):
            legacy[key] = info[key]
    return legacy


def stage_settings(args, fresh: Callable[[dict], Any]) -> tuple[Any, dict]:
    """(settings, what the user set) for a training verb: `fresh(given)` (the stage's defaults, which may
    depend on what was given, e.g. the preset), or with `--resume` the settings saved in `--out`, then the
    `--config` file, then the command line."""
    spec = args._settings_spec
    given = given_settings(args)

    def base(given: dict):
        start = fresh(given)
        if getattr(args, "resume", False):
            saved = saved_settings(spec.get(spec.apply(start, given), "out"))
            if saved is not None:
                return settings_from_dict(start, saved)
        return start

    return settings_from_args(args, base), given
