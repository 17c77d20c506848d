"""aligncap_core: the pure library behind aligncap (no Prefect imports here).

Every stage is a plain function: config + URIs in, URIs out. The CLI (`aligncap`), the
Prefect tasks in `tasks/` and notebooks all call the same functions.
"""

__version__ = "0.1.0"
