"""Training: typed stage configs, one generic loop (`loop.fit`), the teacher and student stages.

Import from the submodules (`aligncap_core.train.stages` etc.); this package imports nothing
heavy itself.
"""
