"""aligncap_ops: operations tooling around the library, not part of it.

`stack` starts, checks and stops a local Prefect + MLflow (+ S3) stack (`aligncap up / status /
down`); `procs` starts detached background processes and stops them by pid file. Nothing in
`aligncap_core` imports this package at module level: the CLI loads it inside the three stack
commands only.
"""
