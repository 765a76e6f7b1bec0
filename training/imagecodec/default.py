"""Default model for `make serve`.

A useful codec needs far more training than a first start can afford (the bounded CPU run below completes
a working but useless codec in 75 s). The project therefore ships a trained checkpoint,
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

`build_default` uses that checkpoint when present and otherwise falls back to the bounded CPU run.

Quality levels (`DEFAULT_LEVELS`, quality -> quantisation step of y): `make serve` installs
imagecodec-q1 .. imagecodec-q4 from that one checkpoint (export.families.imagecodec.publish_levels). Level 2
is the trained operating point (step 1, the streams of the trained model); the others are step-scaled, not
trained: q1 codes y with step 2 (fewer bits), q3 with 0.7 and q4 with 0.5 (more bits, little more PSNR:
the synthesis, trained at step 1, limits the quality). Steps chosen by measurement so that bpp and PSNR
both increase with the level (README, "Quality levels"). Trained levels need the GPU run above.
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
TRAINED_LEVELS: dict[int, float | None] = {q: None for q in range(1, 7)}
SHIPPED = SHIPPED_Q2
DEFAULT_LEVELS: dict[int, float | None] = dict(STEP_LEVELS)


def store_half(checkpoint: Path, target: Path, heldout: dict[str, dict] | None = None) -> Path:
    """Write `checkpoint` with float16 weights (shared modules stay shared), to keep the file small.
    `heldout`: measured figures per trained level ({"1": {"bpp": ..., "psnr": ...}, ...}) that the export
    copies into each level's manifest (`training.imagecodec.benchmark --store`)."""
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
    config = replace(load_config("small"), quality=2, steps=10_000, seconds=DEFAULT_SECONDS, batch=4, crop=128,
                     lr=1e-3, seed=0, device="cpu")
    return train(config, out).best_checkpoint
