"""Bounds on user-given settings, shared by the library, the CLI and the server (pure Python:
the CLI imports it before anything heavy)."""

# More intra-op threads only oversubscribe any machine we target (--threads 2000 froze a 2-core
# box in torch.set_num_threads); a fixed bound keeps the help text the same everywhere.
MAX_THREADS = 256

# The C++ runtime's bounds too (runtime/examples): a larger beam or max_len only exhausts memory
# or time (beam 10**6 took gigabytes within a few steps).
MAX_BEAM = 1000
MAX_DECODE_LEN = 1_000_000

# Beam length penalty accepted from users (CLI, HTTP and WebSocket requests); the library takes
# any finite value.
LENGTH_PENALTY_RANGE = (0.0, 10.0)

# Longest source of one translation, by default (`serve --max-source-chars`, `translate
# --max-source-chars`): the shipped model trained on sources of at most 150 characters, and the
# encoder's memory grows with the source (a 10-MB stdin line would take gigabytes).
DEFAULT_MAX_SOURCE_CHARS = 2000
