"""`qrnn-deploy translate BUNDLE [TEXT]`: translate with the streaming runtime (no PyTorch).

Each target token is written as soon as the decoder makes it final (flushed per token). With no
TEXT, every line of stdin is one source, translated in turn.
"""

from typing import Optional

import typer

from qrnn_deploy.cli.app import app
from qrnn_deploy.cli.options import check_at_least, check_length_penalty, check_threads, threads_option
from qrnn_deploy.limits import DEFAULT_MAX_SOURCE_CHARS


@app.command()
def translate(bundle: str = typer.Argument(..., help="Bundle directory (written by `qrnn-deploy export`)."),
              text: Optional[str] = typer.Argument(None, help="Source text; omitted: read stdin line by line."),
              beam: int = typer.Option(1, "--beam", "-k", min=1, help="Beam size (1 = greedy)."),
              max_len: int = typer.Option(200, "--max-len", min=1, help="Most target symbols per sentence."),
              length_penalty: float = typer.Option(1.0, "--length-penalty",
                                                   help="Beam: scores are divided by (len + 1) ** this (0..10)."),
              max_source_chars: int = typer.Option(DEFAULT_MAX_SOURCE_CHARS, "--max-source-chars",
                                                   help="Longest source accepted, in characters; a "
                                                   "longer one stops with an error."),
              threads: Optional[int] = threads_option(None, "onnxruntime intra-op threads."),
              backend: str = typer.Option("onnxruntime", "--backend", help="onnxruntime or tensorrt.")):
    """Translate TEXT (or each line of stdin) with a seq2seq bundle, printing tokens as they come."""
    import sys

    from qrnn_deploy.decoding import check_decode_options
    from qrnn_deploy.runtime import load_bundle

    check_threads(threads)
    check_length_penalty(length_penalty)
    # The other bounds (--beam <= 1000, --max-len <= 1,000,000) now too, not at the first non-empty
    # line after the empty ones were answered: qrnn_translate refuses them before reading stdin.
    check_decode_options(beam, max_len, length_penalty)
    check_at_least(max_source_chars, "--max-source-chars", 1)
    translator = load_bundle(bundle, backend=backend, threads=threads).translator()
    out = sys.stdout

    def one(source: str, where: str) -> None:
        try:  # undecodable bytes arrive as lone surrogates (surrogateescape), not as an error
            source.encode("utf-8")
        except UnicodeEncodeError as e:
            from qrnn_deploy.errors import DataError

            raise DataError(f"{where} is not valid UTF-8 (an undecodable byte at character {e.start}); "
                            "give UTF-8 text") from None
        if len(source) > max_source_chars:
            from qrnn_deploy.errors import DataError

            raise DataError(f"{where} has {len(source):,} characters, more than --max-source-chars "
                            f"{max_source_chars}; split it into sentences")
        if source:  # an empty line has no source to attend to: it translates to an empty line
            ts = translator.stream()
            ts.feed(source)
            for tok in ts.tokens(beam=beam, max_len=max_len, length_penalty=length_penalty):
                out.write(translator.token_text(tok))
                out.flush()
            ts.close()
        out.write("\n")
        out.flush()

    if text is not None:
        one(text, "TEXT")
        return
    for n, line in enumerate(sys.stdin, 1):
        one(line.rstrip("\r\n"), f"stdin line {n}")
