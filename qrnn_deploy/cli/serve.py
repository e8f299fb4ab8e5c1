"""`qrnn-deploy serve BUNDLE`: the streaming translation server (docs/server.md)."""

from typing import List, Optional

import typer

from qrnn_deploy.cli.app import app
from qrnn_deploy.cli.options import LOG_LEVELS, check_threads, threads_option
from qrnn_deploy.limits import DEFAULT_MAX_SOURCE_CHARS


@app.command()
def serve(bundle: str = typer.Argument(..., help="Seq2seq bundle directory (written by `qrnn-deploy export`)."),
          host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback unless you say otherwise)."),
          port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port."),
          threads: Optional[int] = threads_option(None, "onnxruntime intra-op threads."),
          backend: str = typer.Option("onnxruntime", "--backend", help="onnxruntime or tensorrt."),
          max_streams: int = typer.Option(256, "--max-streams", min=1,
                                          help="Open streams (WebSocket + HTTP) at once; more are refused (1013 / 503)."),
          api_key: Optional[str] = typer.Option(None, "--api-key", envvar="QRNN_SERVE_API_KEY",
                                                help="Require this key on every endpoint but /healthz and the page "
                                                     "(Authorization: Bearer, X-API-Key or ?api_key=)."),
          allow_origin: Optional[List[str]] = typer.Option(None, "--allow-origin",
                                                           help="A web origin (https://app.example.com, or *) whose "
                                                                "pages may use the server besides its own page; "
                                                                "repeatable. Other origins get 403."),
          allow_host: Optional[List[str]] = typer.Option(None, "--allow-host",
                                                         help="A Host name accepted over loopback besides "
                                                              "localhost and loopback addresses (a DNS-rebinding "
                                                              "guard), or *; repeatable."),
          beam: int = typer.Option(1, "--beam", "-k", min=1, help="Default beam size (1 = greedy)."),
          max_beam: Optional[int] = typer.Option(None, "--max-beam", min=1,
                                                 help="Largest beam a request may ask for (default: 8, or --beam "
                                                      "if larger)."),
          max_len: int = typer.Option(200, "--max-len", min=1, help="Most target symbols per sentence."),
          length_penalty: float = typer.Option(1.0, "--length-penalty",
                                               help="Beam: score / (len + 1) ** this (0..10)."),
          max_message_bytes: int = typer.Option(65536, "--max-message-bytes", min=64,
                                                help="Largest client message or HTTP body."),
          max_source_chars: int = typer.Option(DEFAULT_MAX_SOURCE_CHARS, "--max-source-chars", min=1,
                                               help="Longest source sentence."),
          idle_timeout: float = typer.Option(60.0, "--idle-timeout", help="Seconds a silent WebSocket stays open."),
          send_timeout: float = typer.Option(30.0, "--send-timeout",
                                             help="Seconds a message may wait for a client that does not read; "
                                                  "then the connection is dropped."),
          header_timeout: float = typer.Option(10.0, "--header-timeout",
                                               help="Seconds a connection may take to send a request's headers "
                                                    "(from its opening or its previous response); then it is "
                                                    "closed (408)."),
          max_queued_sentences: int = typer.Option(4, "--max-queued-sentences", min=1,
                                                   help="Sentences one WebSocket may have ended and not yet "
                                                        "received; more are refused."),
          batch_wait_ms: float = typer.Option(1.0, "--batch-wait-ms",
                                              help="Idle engine: wait this long for more sources to end before "
                                                   "the first step (0 = never)."),
          max_batch_rows: int = typer.Option(512, "--max-batch-rows", min=1,
                                             help="Most hypotheses in one decoder call."),
          flush_ms: float = typer.Option(1.0, "--flush-ms",
                                         help="Short steps: hand tokens to the network together, at most this "
                                              "late (first tokens never wait; 0 = every step)."),
          flush_max_ms: Optional[float] = typer.Option(None, "--flush-max-ms",
                                                       help="Under load the flush interval grows by 1/8 ms per "
                                                            "stream being decoded, up to this (default: 4 or "
                                                            "--flush-ms if more; = --flush-ms: no growth)."),
          drain_timeout: float = typer.Option(30.0, "--drain-timeout",
                                              help="SIGTERM: seconds to let open translations finish."),
          switch_interval_ms: float = typer.Option(0.2, "--switch-interval-ms", min=0.01,
                                                   help="Python's GIL switch interval in this process "
                                                        "(CPython's default is 5 ms)."),
          log_level: str = typer.Option("info", "--log-level",
                                        help="uvicorn log level: " + ", ".join(LOG_LEVELS) + "."),
          access_log: bool = typer.Option(False, "--access-log/--no-access-log", help="Log every HTTP request.")):
    """Serve a seq2seq bundle: WebSocket streaming, HTTP translation, metrics and a live page at /."""
    from qrnn_deploy.errors import ConfigError
    from qrnn_deploy.serve import ServeConfig, run_server

    if log_level.lower() not in LOG_LEVELS:
        raise ConfigError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    check_threads(threads)
    if max_beam is not None and max_beam < beam:
        from qrnn_deploy.errors import ConfigError

        raise ConfigError(f"--max-beam ({max_beam}) must be >= --beam ({beam})")
    cfg = ServeConfig(beam=beam, max_beam=max(8, beam) if max_beam is None else max_beam, max_len=max_len, length_penalty=length_penalty,
                      max_streams=max_streams, max_message_bytes=max_message_bytes,
                      max_source_chars=max_source_chars, idle_timeout=idle_timeout, send_timeout=send_timeout,
                      header_timeout=header_timeout,
                      max_queued_sentences=max_queued_sentences, batch_wait_ms=batch_wait_ms,
                      max_batch_rows=max_batch_rows, flush_ms=flush_ms,
                      flush_max_ms=flush_max_ms,
                      drain_timeout=drain_timeout, api_key=api_key, allowed_origins=tuple(allow_origin or ()),
                      allowed_hosts=tuple(allow_host or ())).validate()
    from qrnn_deploy.serve.guard import is_loopback_host

    if not is_loopback_host(host) and api_key is None:
        typer.echo(f"warning: serving on {host} without --api-key: anyone who can reach it can use it", err=True)
    run_server(bundle, cfg, host=host, port=port, threads=threads, backend=backend, log_level=log_level.lower(),
               access_log=access_log, switch_interval=switch_interval_ms / 1000)
