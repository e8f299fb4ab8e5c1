"""`qrnn-deploy demo`: a tiny end-to-end run of the PyTorch model (train a few steps on a toy
copy task, stream it chunk by chunk, check the chunked run equals the whole run)."""

import typer

from qrnn_deploy.cli.app import app
from qrnn_deploy.cli.options import check_at_least, check_seed


@app.command()
def demo(steps: int = typer.Option(60, help="Training steps on the toy task."),
         seed: int = typer.Option(0, help="Random seed.")):
    """Train a small QRNN language model on a toy task, then stream it and check chunked == whole."""
    check_at_least(steps, "--steps", 1)
    check_seed(seed)
    import time

    import torch

    from qrnn_deploy.nn import QRNNLanguageModel

    torch.manual_seed(seed)
    V, T, B = 16, 32, 32
    model = QRNNLanguageModel(V, 32, 64, 2, window=[2, 1], pooling="fo")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    # Toy task: predict the symbol seen 1 step ago (needs the window / recurrence to solve).
    t0 = time.perf_counter()
    for step in range(steps):
        x = torch.randint(0, V, (B, T))
        logits, _ = model(x)
        loss = torch.nn.functional.cross_entropy(logits[:, 1:].reshape(-1, V), x[:, :-1].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 0 or step == steps - 1:
            typer.echo(f"step {step:4d}  loss {loss.item():.3f}")
    typer.echo(f"trained {steps} steps in {time.perf_counter() - t0:.1f}s")
    model.eval()
    with torch.no_grad():
        x = torch.randint(0, V, (1, 40))
        whole, _ = model(x)
        state, parts = None, []
        for a, b in [(0, 7), (7, 8), (8, 25), (25, 40)]:
            y, state = model(x[:, a:b], state)
            parts.append(y)
        diff = (torch.cat(parts, 1) - whole).abs().max().item()
        acc = (whole[0, 1:].argmax(-1) == x[0, :-1]).float().mean().item()
    typer.echo(f"streamed in 4 chunks: max |chunked - whole| = {diff:.2e}; copy accuracy {acc:.2f}")
