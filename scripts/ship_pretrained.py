"""Copy a run's best checkpoint into the package as the shipped model (int8 weight matrices with a
float32 scale per row, other tensors fp16: 3.6 MiB for the 3.7M-parameter translator).

    python3 scripts/ship_pretrained.py /work/runs/de-en        # -> qrnn_deploy/pretrained/de-en.safetensors

The model keeps its `extra` (vocabulary, training config, steps, training time) so the shipped
file says how it was made; the copy is re-loaded and its weights compared with the run's (each
quantized matrix within half a quantization step per row). The quantization's effect on the
scores is in docs/results.md (`qrnn-deploy evaluate` on both).
"""

import sys
from pathlib import Path

import torch

from qrnn_deploy.nn import load_checkpoint, save_checkpoint


def main():
    run = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/runs/de-en")
    dest = Path(__file__).resolve().parent.parent / "qrnn_deploy" / "pretrained" / "de-en.safetensors"
    src = run / "best.safetensors"
    model = load_checkpoint(src)
    extra = dict(model.extra, source_checkpoint=str(src.name), stored_dtype="int8 rows + float16")
    save_checkpoint(model, dest, extra=extra, dtype=torch.float16, quantize="int8")
    back = load_checkpoint(dest)
    assert back.config.__dict__ == model.config.__dict__
    sd, sd2 = model.state_dict(), back.state_dict()
    for k, w in sd.items():
        if w.dim() >= 2 and w.numel() >= 4096:
            half_step = w.reshape(w.shape[0], -1).abs().amax(1) / 254
            err = (sd2[k] - w).reshape(w.shape[0], -1).abs().amax(1)
            # Half a step, plus float32 rounding of w / scale and q * scale (about 127 ulps of a
            # step: 1.0000125 half steps were seen on a fresh run).
            if not torch.all(err <= half_step * (1 + 1e-4) + 1e-12):
                worst = float((err / half_step.clamp_min(1e-30)).max())
                raise SystemExit(f"error: {k}: int8 copy off by {worst:.6f} half quantization steps")
    print(f"{dest}: {dest.stat().st_size / 2**20:.1f} MiB, step {extra.get('steps')}, "
          f"{extra.get('trained_seconds', 0) / 60:.1f} min trained, valid loss {extra.get('valid_loss')}")


if __name__ == "__main__":
    main()
