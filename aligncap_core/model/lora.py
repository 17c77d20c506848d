"""The speech student: LoRA adapters + trainable audio-token rows on one frozen base.

Teacher and student share one copy of the base weights (ARCHITECTURE.md step 4-5):
- from-scratch base: the teacher *is* the base (text-trained in full in the teacher stage);
  its pass runs with the student adapter disabled (`teacher_pass(model)`);
- hub base: the teacher may be a separate text LoRA adapter ("teacher") on the same base;
  its pass switches to that adapter (`teacher_pass(model, "teacher")`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from aligncap_core.errors import ConfigError
from aligncap_core.model.config import LoraSettings


def _embedding_module_name(model: Any) -> str:
    emb = model.get_input_embeddings()
    for name, module in model.named_modules():
        if module is emb:
            return name.rsplit(".", 1)[-1]
    raise ConfigError(f"{type(model).__name__}: cannot find the input embedding module")


def lora_config(lora_cfg: LoraSettings, new_token_ids: Sequence[int] = (),
                embedding_name: str = "embed_tokens") -> Any:
    """The peft `LoraConfig` for `lora_cfg`; new-token rows trainable when asked and given."""
    from peft import LoraConfig

    indices = None
    if lora_cfg.train_new_token_rows and len(new_token_ids):
        # peft TrainableTokens: only these rows get a trainable copy; the embedding matrix stays
        # frozen and bit-identical. With tied embeddings the same rows serve the output layer.
        indices = {embedding_name: sorted(set(int(i) for i in new_token_ids))}
    return LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=list(lora_cfg.target_modules),
        trainable_token_indices=indices,
        bias="none",
        task_type="CAUSAL_LM",
    )


def make_student(model: Any, new_token_ids: Sequence[int], lora_cfg: LoraSettings,
                 adapter_name: str = "student") -> Any:
    """Wrap `model` (a causal LM or a PeftModel that already holds e.g. a "teacher" adapter)
    with a new LoRA adapter `adapter_name` and make it the active, only trainable one.

    Trainable: LoRA A/B of the target projections and (if `lora_cfg.train_new_token_rows`) the
    embedding rows `new_token_ids`. Everything else, including every other adapter and the old
    embedding rows, is frozen. Returns the PeftModel.
    """
    from peft import PeftModel, get_peft_model

    is_peft = isinstance(model, PeftModel)
    base = model.get_base_model() if is_peft else model
    n_rows = base.get_input_embeddings().weight.shape[0]
    bad = [i for i in new_token_ids if not 0 <= int(i) < n_rows]
    if bad:
        raise ConfigError(f"make_student: token ids {bad[:5]} are outside the embedding "
                          f"({n_rows} rows); call add_audio_tokens first")
    cfg = lora_config(lora_cfg, new_token_ids, _embedding_module_name(base))
    if is_peft:
        if adapter_name in model.peft_config:
            raise ConfigError(f"make_student: adapter {adapter_name!r} already exists")
        model.add_adapter(adapter_name, cfg)
        peft_model = model
    else:
        peft_model = get_peft_model(model, cfg, adapter_name=adapter_name)
    peft_model.set_adapter(adapter_name)
    # set_adapter leaves the other adapters' requires_grad as they were: freeze them explicitly
    # so a loaded teacher adapter can never drift.
    for name, p in peft_model.named_parameters():
        p.requires_grad_(f".{adapter_name}" in name and _is_adapter_param(name))
    use_uniform_dropout(peft_model, adapter_name)
    return peft_model


class UniformDropout(torch.nn.Dropout):
    """`nn.Dropout` (same distribution: each element kept with probability 1 - p, scaled by
    1 / (1 - p)), drawing its mask as one uniform sample compared against p. On CPU, torch's
    `bernoulli_` behind `F.dropout` was the largest op after the matmuls in a student step (21%
    of it: 28 LoRA inputs of up to 16 x 280 x 688 floats a step); this is ~2x faster for the
    same mask distribution (the masks themselves differ: another use of the random stream).
    Other devices keep `F.dropout`'s fused kernel. A subclass, so whatever sets
    `nn.Dropout.p` (TRL's `disable_dropout`) still finds it.

    A bf16 input (CPU training in bf16, `aligncap_core.precision`) draws 16-bit uniforms
    instead, four from each 64-bit random number: 7x cheaper than `torch.rand` (3.5 vs 27 ms for
    a 16 x 280 x 688 mask on one core), which was 15% of a bf16 step. p is then a multiple of
    2^-16 (0.05 -> 0.0500031) and the scale 1 / (1 - that p), so the layer stays unbiased.
    fp32 inputs keep the fp32 uniforms (and the exact masks of earlier runs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu":
            return super().forward(x)
        if x.dtype == torch.float32:
            # fp32 uniforms: a bf16 uniform would quantize p
            keep = (torch.rand(x.shape, device=x.device) >= self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))
            return x * keep
        drop = min(round(self.p * 65536), 65535)  # of 65536 equally likely 16-bit values
        if drop == 0:
            return x
        bits = torch.randint(-(2**63), 2**63 - 1, ((x.numel() + 3) // 4,), device=x.device,
                             dtype=torch.int64).view(torch.int16)[: x.numel()].view(x.shape)
        # the scale as a Python float: each product is computed in fp32 and rounded once (a
        # bf16 tensor of scales would round 1/0.95 to 1.0547, a 0.2% bias)
        return (x * (bits >= drop - 32768)).mul_(65536 / (65536 - drop))


def use_uniform_dropout(model: Any, adapter_name: str) -> int:
    """Swap adapter `adapter_name`'s LoRA-input `nn.Dropout`s for `UniformDropout`; returns how
    many were swapped (0 at dropout 0: peft then puts `nn.Identity`)."""
    n = 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if isinstance(drops, torch.nn.ModuleDict) and adapter_name in drops:
            d = drops[adapter_name]
            if type(d) is torch.nn.Dropout:
                drops[adapter_name] = UniformDropout(d.p)
                n += 1
    return n


def set_lora_input_casting(model: Any, enabled: bool) -> int:
    """Switch peft's cast of every LoRA layer's input to its adapter weights' dtype; returns how
    many layers were set. Training under bf16 autocast with fp32 adapters (the frozen base in
    bf16), the cast turns each adapted projection's bf16 input into an fp32 copy, which the
    dropout then masks in fp32 and autocast casts back to bf16 for the matmul: on a CPU with
    AMX that was a quarter of a student step. Off, the input goes through in the autocast dtype
    and autocast casts the adapter weights (once per step: they are leaves). Only valid while
    every forward of `model` runs under autocast (a bf16 input would meet fp32 weights
    otherwise): `train.loop.fit` and the DPO trainer switch it off for their run."""
    n = 0
    for module in model.modules():
        if hasattr(module, "cast_input_dtype_enabled"):  # peft's LoRA layers (not TrainableTokens)
            module.cast_input_dtype_enabled = enabled
            n += 1
    return n


def _is_adapter_param(name: str) -> bool:
    return "lora_" in name or "trainable_tokens_delta" in name


@contextlib.contextmanager
def teacher_pass(model: Any, teacher_adapter: str | None = None) -> Iterator[Any]:
    """Run the frozen teacher on the student's shared base, under `no_grad`.

    teacher_adapter=None: every adapter is disabled (the base *is* the teacher).
    teacher_adapter="teacher": that adapter is active inside the block. The student adapter is
    re-activated and its parameters trainable again on exit, even after an exception.
    """
    from peft import PeftModel

    from aligncap_core.model.caption_head import unwrap_ddp

    model = unwrap_ddp(model)  # launched training hands the DDP wrapper; adapters live inside
    if not isinstance(model, PeftModel):
        with torch.no_grad():
            yield model
        return
    if teacher_adapter is None:
        with torch.no_grad(), model.disable_adapter():
            yield model
        return
    if teacher_adapter not in model.peft_config:
        raise ConfigError(f"teacher adapter {teacher_adapter!r} not loaded "
                          f"(adapters: {', '.join(model.peft_config)})")
    active = model.active_adapter
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    try:
        model.set_adapter(teacher_adapter, inference_mode=True)
        with torch.no_grad():
            yield model
    finally:
        model.set_adapter(active)
        for n, p in model.named_parameters():
            p.requires_grad_(n in trainable)


def trainable_parameter_names(model: Any) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def count_parameters(model: Any) -> dict[str, int]:
    """{'trainable': n, 'total': n} (peft trainable-token copies count as trainable)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total}
