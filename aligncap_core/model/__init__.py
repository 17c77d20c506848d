"""The model core: base LM, speech student (LoRA), KD losses, batching, checkpoints, generation.

Import from the submodules (`aligncap_core.model.losses` etc.); this package imports nothing
heavy itself so `import aligncap_core.model` stays cheap.
"""
