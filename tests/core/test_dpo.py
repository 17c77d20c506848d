"""Candidate sampling and the PO-Regularized DPO round on the micro model (CPU, seconds)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from aligncap_core.errors import ConfigError
from aligncap_core.model.checkpoint import load_checkpoint
from aligncap_core.prefs import dpo as dpo_mod
from aligncap_core.prefs.candidates import sample_candidates
from aligncap_core.prefs.dpo import DPORoundConfig, build_dpo_trainer, run_dpo_round
from aligncap_core.prefs.dpo_data import TEACHER_COLUMN, TeacherInfo, encode_pair
from aligncap_core.prefs.pairs import read_pairs
from tests.helpers.dpo import TEACHER, make_round0, toy_prompt
from tests.helpers.models import audio_vocab, micro_model_with_audio


@pytest.fixture(scope="module")
def round0(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo")
    ckpt, pairs = make_round0(root)
    return SimpleNamespace(root=root, ckpt=ckpt, pairs=pairs)


def _cfg(**kw) -> DPORoundConfig:
    base = dict(max_steps=6, batch_size=2, learning_rate=5e-3, logging_steps=1, lambda_kd=0.5,
                max_length=128)
    return DPORoundConfig(**{**base, **kw})


def _policy_logps(model, ds) -> torch.Tensor:
    """sum log p(chosen ids | prompt ids) with a plain forward (no TRL code)."""
    out = []
    model.eval()
    with torch.no_grad():
        for r in ds:
            ids = torch.tensor([r["prompt_ids"] + r["chosen_ids"]])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            tgt = ids[0, 1:]
            n = len(r["chosen_ids"])
            out.append(logp[-n:].gather(1, tgt[-n:, None]).sum())
    return torch.stack(out)


def test_sample_candidates_seeded_and_deduped():
    model, tok, ids = micro_model_with_audio()
    prompts = [{"id": "a", "prompt": toy_prompt(0)}, {"id": "b", "prompt_ids": [1, 5, 9, *ids[:4]]}]
    state = torch.get_rng_state()
    kw = dict(n=4, max_new_tokens=6, batch_size=3, top_p=0.9)
    one = sample_candidates(model, tok, prompts, seed=7, **kw)
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is untouched
    assert one == sample_candidates(model, tok, prompts, seed=7, **kw)
    assert one != sample_candidates(model, tok, prompts, seed=8, **kw)
    for row in one:
        assert 1 <= len(row["candidates"]) <= 4
        assert len({" ".join(c.lower().split()) for c in row["candidates"]}) == len(row["candidates"])
        s = row["sampling"]
        assert (s["n"], s["temperature"], s["top_p"], s["seed"], s["max_new_tokens"]) == (4, 1.0, 0.9, 7, 6)
        assert s["n_unique"] + s["n_duplicates"] == 4
        assert not any("<a" in c for c in row["candidates"])  # audio tokens suppressed
    greedyish = sample_candidates(model, tok, prompts[:1], seed=0, n=4, max_new_tokens=4,
                                  temperature=1e-4)
    assert greedyish[0]["sampling"]["n_unique"] == 1  # four identical draws -> one candidate
    with pytest.raises(ConfigError, match="unique 'id'"):
        sample_candidates(model, tok, [prompts[0], prompts[0]])


def test_our_tokenization_matches_trl_and_keeps_audio_tokens_whole(round0):
    from trl import DPOTrainer

    _, tok, _ = load_checkpoint(round0.ckpt)
    row = read_pairs(round0.pairs)[0]
    ours = encode_pair(tok, row, TEACHER)
    audio = set(tok.convert_tokens_to_ids(audio_vocab()))
    assert sum(i in audio for i in ours["prompt_ids"]) == 10  # <audio> + 8 codes + </audio>
    # TRL's own string tokenization (its _prepare_dataset on the raw strings; our tokenizer
    # adds no bos, so the prompt text carries it) gives the very same ids
    from datasets import Dataset

    fake = SimpleNamespace(_tokenizer=tok)
    args = SimpleNamespace(dataset_num_proc=None, max_length=None, truncation_mode="keep_start")
    raw = Dataset.from_list([{"prompt": tok.bos_token + row["prompt"], "chosen": row["chosen"],
                              "rejected": row["rejected"]}])
    trl_row = DPOTrainer._prepare_dataset(fake, raw, tok, args, "check")[0]
    for k in ("prompt_ids", "chosen_ids", "rejected_ids"):
        assert trl_row[k] == ours[k], k
    assert ours[TEACHER_COLUMN][0] == tok.bos_token_id and ours["chosen_ids"][-1] == tok.eos_token_id


def test_dpo_trains_adapter_only_and_improves_margin(round0, tmp_path):
    policy, tok, _ = load_checkpoint(round0.ckpt, trainable=True)
    trainer = build_dpo_trainer(policy, tok, read_pairs(round0.pairs), None, _cfg(), tmp_path)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    trainer.train()
    after = policy.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    trainable = {k for k in before if "lora_" in k or "trainable_tokens_delta" in k}
    assert changed and changed <= trainable
    assert any("trainable_tokens_delta" in k for k in changed)  # audio rows learn too
    assert not (set(before) - trainable) & changed  # base weights bit-identical
    logs = [h for h in trainer.state.log_history if "rewards/margins" in h]
    assert logs[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-4)  # reference == policy
    assert logs[-1]["rewards/margins"] > logs[0]["rewards/margins"]
    assert logs[-1]["loss"] < logs[0]["loss"]
    assert trainer.teacher_passes == 6 and all(h["kd_loss"] > 0 for h in logs)


def test_round_k_plus_1_reference_is_round_k_policy(round0):
    from aligncap_core.train.loggers import JsonlLogger

    logger = JsonlLogger(round0.root / "dpo_metrics.jsonl")  # what the round's MLflow run gets
    out = run_dpo_round(round0.ckpt, round0.pairs, None, round0.root / "round-1", _cfg(), logger)
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["stage"], meta["round"], meta["step"]) == ("dpo", 1, 6)
    assert "rewards/margins" in meta["metrics"] and "kd_loss" in meta["metrics"]
    steps = [json.loads(x) for x in (round0.root / "dpo_metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if "dpo/loss" in s] == [1, 2, 3, 4, 5, 6]
    assert {"dpo/rewards/chosen", "dpo/rewards/rejected", "dpo/rewards/margins",
            "dpo/rewards/accuracies"} <= set(steps[0])
    # the round-2 trainer scores its reference with the round-1 policy, not the base
    policy1, tok, _ = load_checkpoint(out, trainable=True)
    trainer = build_dpo_trainer(policy1, tok, read_pairs(round0.pairs), None,
                                _cfg(lambda_kd=0.0), round0.root / "work")
    ds = trainer.train_dataset
    ref = torch.tensor(ds["ref_chosen_logps"])
    want = _policy_logps(load_checkpoint(out)[0], ds)
    torch.testing.assert_close(ref, want, atol=1e-4, rtol=0)
    round0_policy = _policy_logps(load_checkpoint(round0.ckpt)[0], ds)
    assert (ref - round0_policy).abs().max() > 1e-3  # round 1 really moved
    base = load_checkpoint(out)[0]
    with base.disable_adapter():
        base_logps = _policy_logps(base, ds)
    assert (ref - base_logps).abs().max() > 1e-3  # not TRL's peft default (adapters off)


def test_lambda_kd_zero_runs_without_teacher(round0, tmp_path, monkeypatch):
    def no_teacher(*a, **k):
        raise AssertionError("teacher pass with lambda_kd=0")

    monkeypatch.setattr(dpo_mod, "teacher_pass", no_teacher)
    rows = [{k: v for k, v in r.items() if k != "teacher_text"} for r in read_pairs(round0.pairs)]
    policy, tok, _ = load_checkpoint(round0.ckpt, trainable=True)
    trainer = build_dpo_trainer(policy, tok, rows, None, _cfg(lambda_kd=0.0, max_steps=2), tmp_path)
    assert TEACHER_COLUMN not in trainer.train_dataset.column_names
    trainer.train()
    assert trainer.teacher_passes == 0 and trainer.state.global_step == 2
    with pytest.raises(ConfigError, match="no teacher text"):
        build_dpo_trainer(policy, tok, rows, TeacherInfo(), _cfg(), tmp_path)


def test_dpo_loss_scoring_only_completions_equals_scoring_every_position(round0, tmp_path, monkeypatch):
    import trl.trainer.utils as tu

    assert dpo_mod.score_completions_only()
    assert tu._use_triton(torch.device("cpu"))  # the compact path is on for CPU
    policy, tok, _ = load_checkpoint(round0.ckpt, trainable=True)
    trainer = build_dpo_trainer(policy, tok, read_pairs(round0.pairs), None,
                                _cfg(lambda_kd=0.0, batch_size=4), tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))
    params = [p for p in policy.parameters() if p.requires_grad]

    def loss_and_grads():
        policy.zero_grad(set_to_none=True)
        loss = trainer.compute_loss(policy, dict(batch))
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in params]

    compact, g_compact = loss_and_grads()
    monkeypatch.setattr(tu, "_use_triton", lambda device: False)  # TRL's CPU default
    full, g_full = loss_and_grads()
    assert compact.item() != 0.0
    torch.testing.assert_close(compact, full, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_compact, g_full, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
