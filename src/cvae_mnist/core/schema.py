"""The data that passes between the pipelines and the engine. No Kedro here."""

from __future__ import annotations

import torch

Split = dict[str, torch.Tensor]  # {"images": float32 [N, 1, 28, 28] in [0, 1], "labels": int64 [N]}
History = dict[str, list[float]]  # per epoch: "epoch", "seconds", "train_<term>", "test_<term>"
