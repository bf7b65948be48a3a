"""A lean LoRA training loop (PyTorch + PEFT): no Trainer, so each step is a forward, a
backward and an AdamW step over the adapter's parameters, and nothing else runs on the
CPU between steps.

Defaults suit a ~100M-parameter model on a CPU (`TrainParams`): LoRA rank 16 on every
attention and MLP projection (the frozen base's forward and backward dominate a step's
cost, so adapting all projections costs little more than adapting two, and learns more per
step); a learning rate of 5e-4 (LoRA on a small model tolerates it, and a CPU run has few
steps to converge in); batches of 8 sorted into similar lengths (less padding to compute);
sequences up to 512 tokens (attention cost grows with length; longer examples are dropped
and counted). The device is CUDA when torch sees one, else the CPU."""

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from workers.training.data import IGNORE, Row

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 3
    learning_rate: float = 5e-4
    batch_size: int = 8
    max_length: int = 512
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    warmup_steps: int = 2
    # Validation loss every this many steps (and at the last); training loss every step.
    eval_every: int = 10
    seed: int = 0
    # Stop after this many steps (0: all epochs); for smoke runs and tests.
    max_steps: int = 0
    # Save the adapter, optimiser and schedule every this many steps (0: never), so a run
    # killed mid-way resumes from there (`finetune resume ID`). One SmolLM2 checkpoint is
    # ~60 MB (the rank-16 adapter and its two Adam moments) and ~1 s to write.
    checkpoint_every: int = 20

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StepLog:
    step: int
    steps_total: int
    epoch: float
    train_loss: float
    validation_loss: float | None
    tokens: int = 0  # in the step's batch, padding excluded
    seconds: float = 0.0  # the step's forward, backward and update (validation excluded)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": round(self.epoch, 4),
            "train_loss": self.train_loss,
            "validation_loss": self.validation_loss,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 3),
        }


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def with_lora(model: Any, params: TrainParams) -> Any:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=params.lora_r,
        lora_alpha=params.lora_alpha,
        lora_dropout=params.lora_dropout,
        target_modules=list(TARGET_MODULES),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def batches(rows: list[Row], size: int, rng: random.Random) -> list[list[Row]]:
    """Rows shuffled, then grouped by length in windows of 8 batches (less padding), and
    the batches shuffled again so an epoch does not go from short to long."""
    order = rows[:]
    rng.shuffle(order)
    window = size * 8
    grouped: list[list[Row]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda row: len(row.input_ids))
        grouped += [chunk[i : i + size] for i in range(0, len(chunk), size)]
    rng.shuffle(grouped)
    return grouped


def collate(batch: list[Row], pad_id: int, device: str) -> dict[str, Any]:
    import torch

    width = max(len(row.input_ids) for row in batch)
    ids = [row.input_ids + [pad_id] * (width - len(row.input_ids)) for row in batch]
    labels = [row.labels + [IGNORE] * (width - len(row.labels)) for row in batch]
    mask = [[1] * len(row.input_ids) + [0] * (width - len(row.input_ids)) for row in batch]
    return {
        "input_ids": torch.tensor(ids, device=device),
        "labels": torch.tensor(labels, device=device),
        "attention_mask": torch.tensor(mask, device=device),
    }


def steps_total(n_rows: int, params: TrainParams) -> int:
    total = params.epochs * math.ceil(n_rows / params.batch_size)
    return min(total, params.max_steps) if params.max_steps else total


def validation_loss(model: Any, rows: list[Row], params: TrainParams, pad_id: int) -> float:
    import torch

    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), params.batch_size):
            batch = rows[start : start + params.batch_size]
            n = sum(row.trained_tokens for row in batch)
            loss = model(**collate(batch, pad_id, model.device.type)).loss
            total, tokens = total + float(loss) * n, tokens + n
    model.train()
    return total / max(tokens, 1)


class Trainer:
    """One run's model, optimiser and schedule; `run` calls `on_step` after every step,
    which may raise to stop the run (a cancel)."""

    def __init__(self, model: Any, pad_id: int, params: TrainParams, n_rows: int) -> None:
        import torch

        self.model = model
        self.pad_id = pad_id
        self.params = params
        self.total = steps_total(n_rows, params)
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=params.learning_rate)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)

    def _lr_factor(self, step: int) -> float:
        """Linear warm-up, then linear decay to zero at the last step."""
        if step < self.params.warmup_steps:
            return (step + 1) / (self.params.warmup_steps + 1)
        remaining = self.total - step
        return max(remaining, 0) / max(self.total - self.params.warmup_steps, 1)

    def run(
        self,
        rows: list[Row],
        validation: list[Row],
        on_step: Callable[[StepLog], None],
        *,
        start_step: int = 0,
        on_checkpoint: Callable[[int], None] = lambda step: None,
    ) -> None:
        """Steps START_STEP+1 .. total. The batches of an epoch depend only on the seed, so
        a resumed run replays the order and skips what its checkpoint already did."""
        rng = random.Random(self.params.seed)
        per_epoch = math.ceil(len(rows) / self.params.batch_size)
        step = 0
        self.model.train()
        for _epoch in range(self.params.epochs):
            for batch in batches(rows, self.params.batch_size, rng):
                if step >= self.total:
                    return
                step += 1
                if step <= start_step:
                    continue
                started = time.perf_counter()
                loss = self._step(batch)
                took = time.perf_counter() - started
                tokens = sum(len(row.input_ids) for row in batch)
                on_step(self._log(step, per_epoch, loss, validation, tokens, took))
                every = self.params.checkpoint_every
                if every and step % every == 0 and step < self.total:
                    on_checkpoint(step)

    def save_state(self, directory: Any) -> None:
        """The adapter and the optimiser's, schedule's and RNGs' state, in DIRECTORY."""
        import torch

        self.model.save_pretrained(directory)
        state = {
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        torch.save(state, directory / "trainer.pt")

    def load_state(self, directory: Any) -> None:
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        weights = load_file(str(directory / "adapter_model.safetensors"))
        set_peft_model_state_dict(self.model, weights)
        state = torch.load(directory / "trainer.pt", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["torch_rng"])

    def _step(self, batch: list[Row]) -> float:
        import torch

        loss = self.model(**collate(batch, self.pad_id, self.model.device.type)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def _log(
        self,
        step: int,
        per_epoch: int,
        loss: float,
        validation: list[Row],
        tokens: int,
        seconds: float,
    ) -> StepLog:
        evaluate = validation and (step % self.params.eval_every == 0 or step == self.total)
        valid = (
            validation_loss(self.model, validation, self.params, self.pad_id) if evaluate else None
        )
        return StepLog(step, self.total, step / per_epoch, loss, valid, tokens, seconds)
