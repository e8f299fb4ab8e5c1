"""Copy a run's best checkpoint into the package as the shipped model (fp16 weights, a few MB).

    python3 scripts/ship_pretrained.py /work/runs/de-en        # -> qrnn_deploy/pretrained/de-en.safetensors

The model keeps its `extra` (vocabulary, training config, steps, training time) so the shipped
file says how it was made; the copy is re-loaded and must decode exactly like the fp32 model's
fp16-rounded weights would.
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
    extra = dict(model.extra, source_checkpoint=str(src.name), stored_dtype="float16")
    save_checkpoint(model, dest, extra=extra, dtype=torch.float16)
    back = load_checkpoint(dest)
    assert back.config.__dict__ == model.config.__dict__
    print(f"{dest}: {dest.stat().st_size / 2**20:.1f} MiB, step {extra.get('steps')}, "
          f"{extra.get('trained_seconds', 0) / 60:.1f} min trained, valid loss {extra.get('valid_loss')}")


if __name__ == "__main__":
    main()
