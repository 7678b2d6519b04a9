"""How the experiment's models are trained, for the experiment (run.py) and the benchmarks' campaign
rows (embeddings.py) alike: the schedule, the training loop with early stopping, one torch thread.
Imports torch only when called."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math

__all__ = ["Schedule", "one_torch_thread", "train"]


@dataclasses.dataclass(frozen=True)
class Schedule:
    """What train() does besides the data: AdamW's learning rate and weight decay (on every weight
    but the biases and the temperature), the batches, early stopping after `patience` epochs without
    a better validation loss, and the seed of the batch order."""

    learning_rate: float
    max_epochs: int
    batch_size: int
    patience: int = 2
    weight_decay: float = 0.0
    seed: int = 0


def train(model, user_x, ad_x, pairs, targets, mask, train_rows, validation_rows, schedule: Schedule):
    """AdamW on the mean BCE-with-logits of the outcomes `mask` keeps, over the impressions
    `train_rows` of `pairs` (user, ad); stops after `schedule.patience` epochs without a better loss
    on `validation_rows` and keeps the best epoch's weights. Returns (that epoch, its validation
    loss)."""
    import torch
    from torch.nn import functional as F

    pairs, targets, mask = torch.from_numpy(pairs), torch.from_numpy(targets), torch.from_numpy(mask)
    train_rows, validation_rows = torch.from_numpy(train_rows), torch.from_numpy(validation_rows)
    # start at the base rates: from 0 (p = 1/2) a 1 % rate takes many steps
    rates = (targets[train_rows] * mask[train_rows]).sum(0) / mask[train_rows].sum(0).clamp(min=1)
    model.set_biases(torch.logit(rates.clamp(1e-4, 1 - 1e-4)))
    undecayed = {"log_temperature"}
    decay = [p for name, p in model.named_parameters() if not (name.endswith("bias") or name in undecayed)]
    rest = [p for name, p in model.named_parameters() if name.endswith("bias") or name in undecayed]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": schedule.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=schedule.learning_rate)
    order = torch.Generator().manual_seed(schedule.seed)

    def loss_of(rows):
        logits = model(user_x[pairs[rows, 0]], ad_x[pairs[rows, 1]])
        return F.binary_cross_entropy_with_logits(logits, targets[rows], weight=mask[rows],
                                                  reduction="sum") / mask[rows].sum()

    best, best_epoch, best_state = math.inf, 0, copy.deepcopy(model.state_dict())
    for epoch in range(schedule.max_epochs):
        for batch in train_rows[torch.randperm(len(train_rows), generator=order)].split(schedule.batch_size):
            loss = loss_of(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            validation_loss = loss_of(validation_rows).item()
        if validation_loss < best:
            best, best_epoch, best_state = validation_loss, epoch + 1, copy.deepcopy(model.state_dict())
        elif epoch + 1 - best_epoch >= schedule.patience:
            break
    model.load_state_dict(best_state)
    return best_epoch, best


@contextlib.contextmanager
def one_torch_thread():
    """Torch on one thread inside the block, its thread count restored after: the models are too
    small for threads inside an operation to pay, and threads spinning on cores another process
    holds made a busy machine ten times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
