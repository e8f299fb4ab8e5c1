"""Settings of the translation server: decoding defaults, limits, batching, access."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from qrnn_deploy.limits import DEFAULT_MAX_SOURCE_CHARS, LENGTH_PENALTY_RANGE, MAX_BEAM, MAX_DECODE_LEN
from qrnn_deploy.errors import ConfigError


DEFAULT_FLUSH_MAX_MS = 4.0  # reached at 32 streams being decoded (1/8 ms each)


def flush_limit_ms(flush_ms: float, flush_max_ms: Optional[float]) -> float:
    """flush_max_ms, or by default DEFAULT_FLUSH_MAX_MS (flush_ms when that is longer)."""
    return max(DEFAULT_FLUSH_MAX_MS, flush_ms) if flush_max_ms is None else max(flush_ms, flush_max_ms)


@dataclass
class ServeConfig:
    """What `qrnn-deploy serve` takes besides the bundle. Every limit is enforced per request.

    beam / max_len / length_penalty: decoding defaults; a request may ask for a smaller max_len
      and any beam up to `max_beam`.
    max_streams: WebSocket connections plus HTTP translations open at once; one more is refused
      (WebSocket close 1013, HTTP 503).
    max_message_bytes: largest client message (WebSocket frame or HTTP body) the server reads.
    max_source_chars: longest source of one translation.
    idle_timeout: seconds a WebSocket may stay silent while nothing is being decoded for it.
    send_timeout: seconds a message to a client may wait for the client to read (its socket
      buffers full); then the connection is dropped and its translations freed, so a client that
      stops reading cannot hold a stream slot.
    header_timeout: seconds a connection may take to send a request's head (method, path,
      headers), counted from its opening or from the end of its previous response; then it is
      closed (with 408 if part of a head came), so silent or trickling clients cannot hold
      connections.
    max_queued_sentences: sentences one WebSocket may have ended and not yet received in full;
      one more is refused (so a client that sends without reading cannot take the whole engine).
    batch_wait_ms: how long the engine waits for more translations to start before their first
      step when it was idle (0: never waits); steps of translations already decoding are gathered
      without waiting.
    max_batch_rows: most rows (hypotheses) in one decoder call; more are split into several calls.
    flush_ms: when decoder steps are shorter than this, the tokens of consecutive steps are handed
      to the event loop together, at most this late (first tokens and done never wait); 0: every step.
    flush_max_ms: under load the flush interval grows by 1/8 ms per translation being decoded
      (32 -> 4 ms), up to this: fewer, larger token messages when there are many streams.
      None: max(4, flush_ms); equal to flush_ms: no growth.
    drain_timeout: seconds SIGTERM waits for open streams to finish before the server stops.
    api_key: when set, every endpoint but /healthz and the page at / needs it.
    allowed_origins: web origins (e.g. "https://app.example.com", or "*") whose pages may use the
      server besides its own page; requests of other origins are refused (serve/guard.py).
    allowed_hosts: Host names accepted on loopback connections besides loopback ones (a guard
      against DNS rebinding), or "*".
    """

    beam: int = 1
    max_beam: int = 8
    max_len: int = 200
    length_penalty: float = 1.0
    max_streams: int = 256
    max_message_bytes: int = 65536
    max_source_chars: int = DEFAULT_MAX_SOURCE_CHARS
    idle_timeout: float = 60.0
    send_timeout: float = 30.0
    header_timeout: float = 10.0
    max_queued_sentences: int = 4
    batch_wait_ms: float = 1.0
    max_batch_rows: int = 512
    flush_ms: float = 1.0
    flush_max_ms: Optional[float] = None
    drain_timeout: float = 30.0
    api_key: Optional[str] = None
    allowed_origins: tuple = ()
    allowed_hosts: tuple = ()

    def validate(self) -> "ServeConfig":
        checks = [
            (self.beam >= 1, f"beam must be >= 1, got {self.beam}"),
            (self.max_beam >= self.beam, f"max_beam ({self.max_beam}) must be >= beam ({self.beam})"),
            (self.max_beam <= MAX_BEAM, f"max_beam must be <= {MAX_BEAM}, got {self.max_beam}"),
            (1 <= self.max_len <= MAX_DECODE_LEN, f"max_len must be in [1, {MAX_DECODE_LEN}], got {self.max_len}"),
            (LENGTH_PENALTY_RANGE[0] <= self.length_penalty <= LENGTH_PENALTY_RANGE[1],
             f"length_penalty must be in [{LENGTH_PENALTY_RANGE[0]:g}, {LENGTH_PENALTY_RANGE[1]:g}], "
             f"got {self.length_penalty}"),
            (self.max_streams >= 1, f"max_streams must be >= 1, got {self.max_streams}"),
            (self.max_message_bytes >= 64, f"max_message_bytes must be >= 64, got {self.max_message_bytes}"),
            (self.max_source_chars >= 1, f"max_source_chars must be >= 1, got {self.max_source_chars}"),
            (self.max_queued_sentences >= 1,
             f"max_queued_sentences must be >= 1, got {self.max_queued_sentences}"),
            (self.idle_timeout > 0, f"idle_timeout must be > 0 seconds, got {self.idle_timeout}"),
            (self.send_timeout > 0, f"send_timeout must be > 0 seconds, got {self.send_timeout}"),
            (self.header_timeout > 0, f"header_timeout must be > 0 seconds, got {self.header_timeout}"),
            (0 <= self.batch_wait_ms <= 100, f"batch_wait_ms must be in [0, 100], got {self.batch_wait_ms}"),
            (self.max_batch_rows >= self.max_beam,
             f"max_batch_rows ({self.max_batch_rows}) must be >= max_beam ({self.max_beam})"),
            (0 <= self.flush_ms <= 100, f"flush_ms must be in [0, 100], got {self.flush_ms}"),
            (self.flush_max_ms is None or self.flush_ms <= self.flush_max_ms <= 100,
             f"flush_max_ms must be in [flush_ms ({self.flush_ms:g}), 100], got {self.flush_max_ms}"),
            (self.drain_timeout >= 0, f"drain_timeout must be >= 0, got {self.drain_timeout}"),
            (self.api_key is None or len(self.api_key) > 0, "api_key must not be empty"),
            (all(isinstance(o, str) and (o == "*" or "://" in o) for o in self.allowed_origins),
             f"allowed_origins must be origins such as https://app.example.com, or *, got "
             f"{list(self.allowed_origins)}"),
            (all(isinstance(h, str) and h and not any(c in h for c in "/ :") for h in self.allowed_hosts),
             f"allowed_hosts must be host names without a port (or *), got {list(self.allowed_hosts)}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"serve: {msg}")
        return self

    def flush_limit_ms(self) -> float:
        """The most the flush interval grows to under load (flush_max_ms, resolved)."""
        return flush_limit_ms(self.flush_ms, self.flush_max_ms)

    def public(self) -> dict:
        """The settings a client may see (everything but the key)."""
        d = asdict(self)
        d.pop("api_key")
        d["flush_max_ms"] = self.flush_limit_ms()
        d["auth"] = self.api_key is not None
        return d
