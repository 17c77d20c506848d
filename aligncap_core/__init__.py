"""aligncap_core: the pure library behind aligncap (no Prefect imports here).

Every stage is a plain function: config + URIs in, URIs out. The CLI (`aligncap`), the
Prefect tasks in `tasks/` and notebooks all call the same functions.
"""

__version__ = "0.1.0"

import os as _os

# oneDNN (the CPU bf16 matmuls) keeps a compiled primitive, with its reordered weights, per matmul
# shape, up to 1024 of them; training batches grouped by length have many shapes, so the cache
# grew a demo's student stage to 7.5 GB. Capped at 16: 200 student steps peak at 3.5 GB instead
# of ~6.0 GB and run as fast (8,820 against 7,307 tokens/s), and an evaluation's captions are the
# same in 45 s against 49 s (docs/PERFORMANCE.md, item 6d). oneDNN reads the variable when its
# cache is first made, so it is set here, before any of our code runs a matmul; a value in the
# environment is kept.
_os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")
