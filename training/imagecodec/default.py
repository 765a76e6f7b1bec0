"""Default model for `make serve`.

A useful codec needs far more training than a first start can afford (the bounded CPU run below completes
a working but useless codec in 75 s). The project therefore ships trained checkpoints: served since issue 30,
`models/imagecodec/imagecodec-vr.pt` (six trained levels, below), started from the one-lambda checkpoint
`models/imagecodec/imagecodec-q2.pt` (small config, Phase 2, quality 2, float16 weights, ~7.9 MB), reproduced by

    bash benchmarks/imagecodec_gpu_train.sh runs/ic1 430 8                  # one H100, q1..q4 at once
    bash benchmarks/imagecodec_gpu_train.sh runs/ic2 320 16 runs/ic1 5e-4   # continue
    bash benchmarks/imagecodec_gpu_train.sh runs/ic3 330 16 runs/ic2 3e-4   # continue (~18 min in all)
    (then store runs/ic3/q2/checkpoint.pt with float16 weights, see store_half below: the weights at
    commit 3a2cfcd, ~5,100 steps on scikit-image's 15 photographs)
    # then 90 min on the 2-core CPU on the corpus (scripts/build_codec_corpus.py), 5,900 steps, resumable:
    python -m training.imagecodec.train --out runs/ic_ft/q2 --quality 2 --init <the weights above> \
        --images /work/corpus/train --scales 1 0.5 0.25 --crop 256 --batch 4 --steps 1000000 --seconds 5400 \
        --lr 3e-4 --eval-every 1000 --save-every 300 --resume
    (store runs/ic_ft/q2/checkpoint.pt with store_half: the best validated step, here the last)

`build_default` uses the shipped checkpoint when present and otherwise falls back to the bounded CPU run (a
variable-rate model with the same six lambdas, so the same levels are installed).

Quality levels (issue 30): `make serve` installs imagecodec-q1 .. imagecodec-q6 (`DEFAULT_LEVELS` = {q: None}),
the six trained levels of the variable-rate checkpoint `models/imagecodec/imagecodec-vr.pt` (float16, ~7.9 MB):
one model, one lambda per level (0.0025 .. 0.1), learned per-channel quantisation steps per level (README,
"Variable rate"). It was started from imagecodec-q2.pt with

    python -m training.imagecodec.train --out /work/runs-codec/vr --init models/imagecodec/imagecodec-q2.pt \
        --images /work/corpus/train --scales 1 0.5 0.25 --crop 256 --batch 4 --steps 1000000 --seconds 28800 \
        --lr 3e-4 --step-lr 3e-3 --lambdas 0.0025 0.0052 0.0109 0.0229 0.0478 0.1 --val-corpus /work/corpus \
        --eval-every 400 --log-every 1 --save-every 300 --device cpu --resume
    (one thread; shipped: the snapshot of its train_state.pt at step 2,562, train.checkpoint_from_state, stored
    with store_half and its held-out figures recorded by `benchmark --record`)

Before issue 30 the levels were that one-lambda checkpoint at quantisation steps (`STEP_LEVELS`: q1 step 2,
q2 step 1 = the trained point, q3 0.7, q4 0.5; not trained, the synthesis trained at step 1 limits them);
`SHIPPED_Q2` stays for the step-level tests and as the variable-rate run's start.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from training.checkpoints import save_checkpoint
from training.imagecodec.config import load_config
from training.imagecodec.train import FAMILY, load_checkpoint, read_payload, train

DEFAULT_SECONDS = 75.0
MODELS = Path(__file__).resolve().parents[2] / "models" / "imagecodec"
# The one-lambda checkpoint and its levels by quantisation step (kept: the variable-rate run starts from it,
# and the step-level tests and figures use it).
SHIPPED_Q2 = MODELS / "imagecodec-q2.pt"
STEP_LEVELS: dict[int, float] = {1: 2.0, 2: 1.0, 3: 0.7, 4: 0.5}
# A variable-rate checkpoint (issue 30): six trained levels, each with its lambda and learned per-channel
# quantisation steps; {quality: None} = the checkpoint's trained level of that number.
SHIPPED_VR = MODELS / "imagecodec-vr.pt"
LAMBDAS_VR: tuple[float, ...] = (0.0025, 0.0052, 0.0109, 0.0229, 0.0478, 0.1)  # its levels' lambdas (q1 .. q6)
TRAINED_LEVELS: dict[int, float | None] = {q: None for q in range(1, len(LAMBDAS_VR) + 1)}
# What `make serve` installs: imagecodec-q1 .. imagecodec-q6, the trained levels of the variable-rate checkpoint.
SHIPPED = SHIPPED_VR
DEFAULT_LEVELS: dict[int, float | None] = dict(TRAINED_LEVELS)


def store_half(checkpoint: Path, target: Path, heldout: dict[str, dict] | None = None) -> Path:
    """Write `checkpoint` with float16 weights (shared modules stay shared), to keep the file small.
    `heldout`: measured figures per trained level ({"1": {"bpp": ..., "psnr": ...}, ...}) that the export
    copies into each level's manifest (`training.imagecodec.benchmark --record` writes them too)."""
    payload = read_payload(checkpoint)
    payload["state_dict"] = load_checkpoint(checkpoint).model.half().state_dict()
    payload.setdefault("provenance", {})["stored_as"] = "float16 weights (cast back to float32 on load)"
    if heldout is not None:
        payload["heldout"] = heldout
    target.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(FAMILY, payload, target)


def build_default(workdir: Path, use_shipped: bool = True) -> Path:
    out = Path(workdir) / "imagecodec"
    if use_shipped and SHIPPED.exists():
        out.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copyfile(SHIPPED, out / "checkpoint.pt"))
    small = load_config("small")
    config = replace(small, model=replace(small.model, levels=len(LAMBDAS_VR)), lambdas=LAMBDAS_VR, steps=10_000,
                     seconds=DEFAULT_SECONDS, batch=4, crop=128, lr=1e-3, seed=0, device="cpu")
    return train(config, out).best_checkpoint
