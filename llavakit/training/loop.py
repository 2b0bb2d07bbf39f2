"""The training loop: AdamW, cosine schedule with warmup, gradient accumulation, bf16 autocast, eval loss,
a progress line, and checkpoints that resume to exactly the result of an uninterrupted run.

Under torchrun (or Ray Train) the same loop is data parallel: each optimizer step takes one global batch of
per_device_train_batch_size x world_size samples per micro-batch, each rank computing its slice, with DDP or
(`fsdp=True`) FSDP2. The loss is normalised by the supervised tokens of the whole step on all ranks, so N ranks
follow the loss curve of one process given the same global batch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from llavakit.distributed.setup import is_distributed, rank, world_size
from llavakit.progress import ProgressLine
from llavakit.training import distributed
from llavakit.training.checkpoint import load_checkpoint, latest_checkpoint, save_checkpoint
from llavakit.training.data import epoch_batches


@dataclasses.dataclass
class TrainingArguments:
    """Names follow transformers' TrainingArguments where they mean the same thing."""

    output_dir: str
    num_train_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides num_train_epochs (optimizer steps)
    per_device_train_batch_size: int = 4
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-5
    projector_lr: float | None = None  # LLaVA's mm_projector_lr (LoRA recipe: 2e-5)
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    bf16: bool = False
    gradient_checkpointing: bool = False
    group_by_modality_length: bool = False
    logging_steps: int = 10
    eval_steps: int = 0  # 0: evaluate at the end only
    save_steps: int = 0  # 0: no intermediate checkpoints
    seed: int = 0
    fsdp: bool = False  # under torchrun: shard with FSDP2 instead of replicating with DDP
    resume_from_checkpoint: str | bool | None = None  # a checkpoint folder, or True for the latest in output_dir
    disable_progress: bool = False


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear 0 -> 1 over `warmup` steps, then cosine 1 -> 0 at `total`."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def build_optimizer(model: nn.Module, args: TrainingArguments) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; no decay on biases/norms; the projector may get its own lr."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr = args.projector_lr if args.projector_lr is not None and "multi_modal_projector" in name else None
        decay = args.weight_decay if param.ndim >= 2 else 0.0
        groups.setdefault((lr if lr is not None else args.learning_rate, decay), []).append(param)
    if not groups:
        raise ValueError("no parameter requires grad: nothing to train (check the stage / freezing)")
    return torch.optim.AdamW([{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()],
                             lr=args.learning_rate)


class Progress:
    """One status line: step, loss, lr, tokens/s and ETA (rewritten in place on a terminal)."""

    def __init__(self, total: int, disabled: bool) -> None:
        self.total, self.disabled, self.start = total, disabled, time.time()
        self.line = ProgressLine()

    def show(self, step: int, loss: float, lr: float, tokens_per_s: float, first_step: int) -> None:
        if self.disabled:
            return
        done = step - first_step
        eta = (time.time() - self.start) / max(done, 1) * (self.total - step)
        line = (f"step {step}/{self.total} | loss {loss:.4f} | lr {lr:.2e} | {tokens_per_s:,.0f} tok/s | "
                f"eta {int(eta) // 60}:{int(eta) % 60:02d}")
        self.line.show(line)

    def note(self, text: str) -> None:
        if not self.disabled:
            self.line.note(text)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Any, collate: Callable, batch_size: int, bf16: bool = False) -> float:
    """Mean loss per supervised token (per sample for task heads' per-sample labels) over the whole dataset."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        if not batch:
            continue
        batch = {k: v.to(device) for k, v in batch.items()}
        n = _items(batch)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        total, count = total + float(loss) * n, count + n
    model.train(was_training)
    return total / max(count, 1)


def _check_trainable(dataset: Any) -> None:
    """Refuse a dataset whose every sample is skipped (nothing to learn), instead of "training" on none of it."""
    if any(dataset[i] is not None for i in range(len(dataset))):  # stops at the first usable sample
        return
    reasons = sorted(set(getattr(dataset, "skipped", {}).values()))
    detail = f": {'; '.join(reasons[:3])}" if reasons else ""
    raise ValueError(f"no trainable samples: all {len(dataset)} samples were skipped{detail}")


def _items(batch: dict[str, torch.Tensor]) -> int:
    """What the model's loss averages over: supervised tokens (after the shift), or samples for per-sample labels."""
    labels = batch["labels"]
    per_token = labels.shape == batch["input_ids"].shape and not labels.is_floating_point()
    return int((labels[:, 1:] != -100).sum()) if per_token else labels.shape[0]


def _stand_in(dataset: Any, collate: Callable, global_batch: list[int]) -> dict[str, torch.Tensor]:
    """A batch of one real sample for a rank whose share is empty, computed with weight 0 so that it joins the
    other ranks' collectives. Taken from the same global batch when possible: under FSDP the ranks must run the
    same blocks (vision tower or not) in the same order."""
    for i in [*global_batch, *range(len(dataset))]:
        if dataset[i] is not None:
            return collate([dataset[i]])
    raise ValueError("no trainable samples")  # unreachable after _check_trainable


def _check_fsdp_modalities(dataset: Any, args: TrainingArguments) -> None:
    """FSDP gathers the vision tower's shards only on ranks whose batch has images: every rank of a micro-batch
    must agree, which grouping by modality guarantees."""
    if not args.fsdp or args.group_by_modality_length or not hasattr(dataset, "modality_lengths"):
        return
    signs = {length > 0 for length in dataset.modality_lengths()}
    if len(signs) > 1:
        raise ValueError("FSDP training on data that mixes image and text-only samples needs "
                         "--group-by-modality-length (group_by_modality_length=True): every rank of a micro-batch "
                         "must run the vision tower, or none")


def train(model: nn.Module, args: TrainingArguments, train_dataset: Any, collate: Callable,
          eval_dataset: Any = None) -> list[dict[str, float]]:
    """Train `model` in place on `train_dataset`; returns the logged history (also in output_dir/log.jsonl).

    One step is `gradient_accumulation_steps` micro-batches; the batch order depends only on (seed, epoch),
    so a resumed run sees the same batches as an uninterrupted one. Inside a process group of N ranks every
    rank calls this with the same arguments and data; each micro-batch is one global batch of
    `per_device_train_batch_size * N` samples, sliced between the ranks (see llavakit.training.distributed).
    """
    if len(train_dataset) == 0:
        raise ValueError("the training set is empty")
    _check_trainable(train_dataset)
    torch.manual_seed(args.seed)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    bs, accum = args.per_device_train_batch_size, args.gradient_accumulation_steps
    if bs < 1 or accum < 1:
        raise ValueError(f"batch size ({bs}) and gradient_accumulation_steps ({accum}) must be >= 1")
    this_rank, ranks = rank(), world_size()
    if ranks > 1:
        _check_fsdp_modalities(train_dataset, args)
    lengths = train_dataset.modality_lengths() if args.group_by_modality_length else None
    per_epoch = math.ceil(len(train_dataset) / (bs * ranks))  # global batches per epoch
    total = args.max_steps if args.max_steps > 0 else max(1, math.ceil(args.num_train_epochs * per_epoch / accum))
    warmup = math.ceil(args.warmup_ratio * total)

    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    device = next(model.parameters()).device
    model = distributed.wrap(model, args.fsdp, args.bf16, device)  # unchanged in one process
    optimizer = build_optimizer(model, args)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_with_warmup(s, total, warmup))
    step = 0
    resume = args.resume_from_checkpoint
    if resume is True:
        resume = latest_checkpoint(output_dir)
    if resume:
        step = load_checkpoint(Path(resume), model, optimizer, scheduler)

    history: list[dict[str, float]] = []
    log_path = output_dir / "log.jsonl"
    progress = Progress(total, args.disable_progress or this_rank != 0)
    first_step, cached_epoch, order = step, -1, []
    window_loss, window_steps, window_tokens, window_start = 0.0, 0, 0, time.time()
    while step < total:
        shares = []  # this rank's (micro-batch, items it weighs) of the step
        for micro in range(step * accum, (step + 1) * accum):
            epoch, position = divmod(micro, per_epoch)
            if epoch != cached_epoch:
                order, cached_epoch = epoch_batches(len(train_dataset), bs * ranks, args.seed, epoch, lengths), epoch
            indices = distributed.rank_share(order[position], this_rank, ranks)
            batch = collate([train_dataset[i] for i in indices]) if indices else {}
            if batch:
                shares.append((batch, _items(batch)))
            elif ranks > 1:  # an empty share, or every sample in it skipped (logged by the dataset)
                shares.append((_stand_in(train_dataset, collate, order[position]), 0))
        # the loss is a sum over the step's supervised tokens on all ranks divided by their count; DDP and FSDP
        # average gradients over ranks, hence the factor `ranks`
        counts = torch.tensor([sum(n for _, n in shares)], dtype=torch.float64)
        if is_distributed():
            dist.all_reduce(counts)
        step_items = max(float(counts[0]), 1.0)
        sums = torch.zeros(2, dtype=torch.float64)  # (loss x items, attended tokens) on this rank
        for i, (batch, n) in enumerate(shares):
            batch = {k: v.to(device) for k, v in batch.items()}
            with distributed.accumulating(model, last=i == len(shares) - 1), \
                    torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                if n:
                    out = model(**batch)
                    loss = out.loss * (n * ranks / step_items)
                    sums += torch.tensor([float(out.loss.detach()) * n, float(batch["attention_mask"].sum())],
                                         dtype=torch.float64)
                else:  # weight 0: gradients of zero, but the same collectives as the other ranks
                    loss = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float().sum() * 0.0
                loss.backward()
        if is_distributed():
            dist.all_reduce(sums)
        loss_value, tokens = float(sums[0]) / step_items, int(sums[1])
        if args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        window_loss, window_steps, window_tokens = window_loss + loss_value, window_steps + 1, window_tokens + tokens

        record: dict[str, float] = {}
        if step % max(args.logging_steps, 1) == 0 or step == total:
            elapsed = max(time.time() - window_start, 1e-9)
            record = {"step": step, "loss": window_loss / window_steps, "lr": scheduler.get_last_lr()[0],
                      "tokens_per_s": window_tokens / elapsed}
            progress.show(step, record["loss"], record["lr"], record["tokens_per_s"], first_step)
            window_loss, window_steps, window_tokens, window_start = 0.0, 0, 0, time.time()
        if eval_dataset is not None and ((args.eval_steps and step % args.eval_steps == 0) or step == total):
            # every rank evaluates the whole set (FSDP needs all ranks in each forward); DDP's inner model skips DDP
            record = {"step": step, **record, "eval_loss": evaluate(distributed.unwrap(model), eval_dataset, collate,
                                                                    args.per_device_eval_batch_size, args.bf16)}
            progress.note(f"step {step}: eval_loss {record['eval_loss']:.4f}")
        if record:
            history.append(record)
            if this_rank == 0:
                with open(log_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
        if args.save_steps and step % args.save_steps == 0 and step < total:
            save_checkpoint(output_dir / f"checkpoint-{step}", model, optimizer, scheduler, step)
    progress.note("training done")
    return history
