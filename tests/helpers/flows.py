"""Settings the flow tests share (plain data: importing this module loads nothing heavy)."""

# The train section of the flows' micro runs (a flow parameter dict, not a TrainConfig).
MICRO_TRAIN = {"lr": 3e-3, "warmup_steps": 2, "batch_size": 8, "eval_every": 10, "eval_batches": 2,
               "checkpoint_every": 0, "num_threads": 1, "log_every": 5}
