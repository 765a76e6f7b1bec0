"""Stratified batch sampler: every batch holds >= 2 classes with >= 2 samples each.

A batch with a single class makes SupCon constant (log(B - 1), no gradient signal between classes), and
an anchor without a positive teaches nothing; drawing `classes_per_batch` classes x `batch_size //
classes_per_batch` samples avoids both.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch


class StratifiedBatchSampler(torch.utils.data.Sampler[list[int]]):
    def __init__(self, labels: Sequence[int], batch_size: int, classes_per_batch: int, seed: int = 0,
                 batches_per_epoch: int | None = None) -> None:
        if classes_per_batch < 2:
            raise ValueError("classes_per_batch must be >= 2")
        if batch_size < 2 * classes_per_batch:
            raise ValueError(f"batch_size {batch_size} < 2 x classes_per_batch {classes_per_batch}")
        self.labels = np.asarray(labels)
        self.by_class = {int(c): np.flatnonzero(self.labels == c) for c in np.unique(self.labels)}
        # Classes with a single sample can never give a positive pair: they are not drawn.
        self.eligible = sorted(c for c, idx in self.by_class.items() if len(idx) >= 2)
        if len(self.eligible) < 2:
            raise ValueError("need at least 2 classes with >= 2 samples each to build contrastive batches")
        self.classes_per_batch = min(classes_per_batch, len(self.eligible))
        self.per_class = batch_size // classes_per_batch
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.batches_per_epoch = batches_per_epoch or max(1, int(np.ceil(len(self.labels) / batch_size)))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        pools = {c: list(rng.permutation(self.by_class[c])) for c in self.eligible}
        class_order: list[int] = []
        for _ in range(self.batches_per_epoch):
            if len(class_order) < self.classes_per_batch:  # cycle through classes evenly
                class_order += list(rng.permutation(self.eligible))
            chosen: list[int] = []
            for c in class_order:
                if c not in chosen:
                    chosen.append(c)
                if len(chosen) == self.classes_per_batch:
                    break
            for c in chosen:
                class_order.remove(c)
            batch = []
            for c in chosen:
                take = min(self.per_class, len(self.by_class[c]))  # >= 2 by eligibility
                if len(pools[c]) < take:  # refill without repeating the leftovers: samples stay distinct
                    rest = pools[c]
                    pools[c] = rest + [i for i in rng.permutation(self.by_class[c]) if i not in rest]
                batch += [int(i) for i in pools[c][:take]]
                del pools[c][:take]
            yield batch
