"""Where is the KD signal? Token-level decomposition of teacher and students on held-out captions.

    python docs/experiments/kd_signal.py --data runs/kd_vs_sft/data \
        --student kd=runs/kd_vs_sft/kd/step-00000400 --student sft=runs/kd_vs_sft/sft/step-00000400 \
        --split valid --split zeroshot --limit 120

For every reference caption token of the held-out clips it takes the teacher's distribution
(text path: transcript + P_act, the KD target of training) and each student's (speech path), and
splits the tokens into **clue tokens** (inside a phrase the clue parser reads as an attribute
clue: "a high voice", "sounding angry", "a woman") and **other tokens** (wording). Per group it
prints, in nats per token: the teacher's and each student's cross-entropy on the reference token,
the teacher's entropy (how much the KD target says beyond the one-hot label), KL(teacher ||
student), and top-1 agreement with the reference. If KD has little to transfer at the clue
tokens (low teacher entropy there: its target is nearly the label the CE term already gives)
while the students' excess loss sits at the clue tokens, the bottleneck is reading the audio,
not the training signal. Output: one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch

from aligncap_core.clues import EmotionClueParser
from aligncap_core.inference.captioner import Captioner
from aligncap_core.inference.evaluate import select_rows, teacher_adapter_name
from aligncap_core.model.batching import pad_examples
from aligncap_core.model.losses import align_caption_logits
from aligncap_core.train import data
from aligncap_core.train.stages import teacher_caption_logits

CATEGORIES = ("emotion", "pitch", "speed", "volume", "gender")


def clue_char_mask(caption: str, parser: EmotionClueParser) -> list[bool]:
    """True for every character inside a clue phrase the parser found in `caption`."""
    mask = [False] * len(caption)
    low = caption.lower()
    for clue in parser.parse(caption).clues:
        if clue.category not in CATEGORIES:
            continue
        # the phrase as written, else its head word (the parser may lemmatize the phrase)
        for phrase in (clue.text.lower(), clue.head.lower()):
            i = low.find(phrase)
            if i >= 0:
                mask[i:i + len(phrase)] = [True] * len(phrase)
                break
    return mask


def value_token_map(tok) -> dict[str, dict[int, str]]:
    """{category: {first token id of a lexicon word (with its leading space): value}}, keeping
    only tokens that start words of a single value of that category."""
    from aligncap_core.clues import lexicon as lx

    out: dict[str, dict[int, str]] = {}
    for cat, table in (("emotion", lx.EMOTION), ("pitch", lx.PITCH), ("speed", lx.SPEED),
                       ("volume", lx.VOLUME), ("gender", lx.GENDER)):
        seen: dict[int, set[str]] = defaultdict(set)
        for value, words in table.items():
            for w in lx.phrase_list(words):
                if " " in w or "*" in w:
                    continue
                for form in (" " + w, " " + w.capitalize()):
                    seen[tok(form, add_special_tokens=False)["input_ids"][0]].add(value)
        out[cat] = {t: next(iter(v)) for t, v in seen.items() if len(v) == 1}
    return out


def value_positions(tok, caption: str, parser: EmotionClueParser, vmap) -> list[tuple[int, str, str]]:
    """(caption token index, category, value) at the first token of each clue head word whose
    first token names one value of its category."""
    enc = tok(caption, add_special_tokens=False, return_offsets_mapping=True)
    low = caption.lower()
    out = []
    for clue in parser.parse(caption).clues:
        if clue.category not in CATEGORIES or not clue.value:
            continue
        i = low.find(clue.head.lower())
        if i < 0:
            continue
        for j, (a, b) in enumerate(enc["offset_mapping"]):
            if a <= i < b or (a == i - 1 and caption[a] == " "):
                t = enc["input_ids"][j]
                if vmap[clue.category].get(t) == clue.value:
                    out.append((j, clue.category, clue.value))
                break
    return out


def value_masses(logp: torch.Tensor, cat: str, value: str, vmap) -> tuple[float, float]:
    """Probability mass on word-start tokens of `value` and of the category's other values."""
    p = logp.exp()
    right = sum(float(p[t]) for t, v in vmap[cat].items() if v == value)
    wrong = sum(float(p[t]) for t, v in vmap[cat].items() if v != value)
    return right, wrong


def token_groups(tok, caption: str, parser: EmotionClueParser, n_tokens: int) -> list[bool] | None:
    """Per caption token (eos included, as the last, a wording token): is it a clue token?"""
    enc = tok(caption, add_special_tokens=False, return_offsets_mapping=True)
    if len(enc["input_ids"]) + 1 != n_tokens:
        return None
    chars = clue_char_mask(caption, parser)
    groups = [any(chars[a:b]) for a, b in enc["offset_mapping"]]
    return groups + [False]


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="prepared + tokenized data dir")
    ap.add_argument("--student", action="append", required=True, help="NAME=CHECKPOINT")
    ap.add_argument("--split", action="append", default=None)
    ap.add_argument("--limit", type=int, default=120)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    data_dir = Path(args.data)
    splits = args.split or ["valid", "zeroshot"]
    parser = EmotionClueParser()
    vmaps: dict[int, dict] = {}
    rows = select_rows(data.read_rows(data_dir), splits, args.limit)
    out: dict = {"data": str(data_dir), "limit": args.limit, "splits": {}}
    for split in splits:
        split_rows = [r for r in rows if r.get("split") == split]
        # sums[group][quantity]; the teacher's figures come from the first student's base
        sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for si, spec in enumerate(args.student):
            name, ckpt = spec.split("=", 1)
            cap = Captioner.load(ckpt, device="cpu")
            model, tok = cap.model, cap.tokenizer
            model.eval()
            adapter = teacher_adapter_name(cap.meta)
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            pairs = data.student_examples(tok, data_dir, split_rows, instruction=cap.speech.instruction,
                                          keep_q=cap.speech.keep_q, max_len=cap.max_len,
                                          acoustic_prompt=True, with_teacher=True)
            captions = [c for r in split_rows for c in data.row_captions(r)]
            assert len(captions) == len(pairs), (len(captions), len(pairs))
            for b in range(0, len(pairs), args.batch_size):
                chunk = pairs[b:b + args.batch_size]
                caps = captions[b:b + args.batch_size]
                s = pad_examples([p["student"] for p in chunk], pad)
                t = pad_examples([p["teacher"] for p in chunk], pad)
                t_cap, _ = teacher_caption_logits(model, t, adapter)
                logits = model(input_ids=s["input_ids"], attention_mask=s["attention_mask"]).logits
                s_cap, mask = align_caption_logits(logits, s["caption_start"], s["caption_len"])
                t_lp, s_lp = t_cap.float().log_softmax(-1), s_cap.float().log_softmax(-1)
                for i, p in enumerate(chunk):
                    ex = p["student"]
                    n = int(mask[i].sum())
                    target = torch.tensor(ex.input_ids[ex.caption_start:ex.caption_start + n])
                    groups = token_groups(tok, caps[i], parser, n)
                    if groups is None:
                        sums["skipped"]["captions"] += 1 if si == 0 else 0
                        continue
                    tl, sl = t_lp[i, :n], s_lp[i, :n]
                    t_ce = -tl.gather(1, target[:, None])[:, 0]
                    s_ce = -sl.gather(1, target[:, None])[:, 0]
                    kl = (tl.exp() * (tl - sl)).sum(-1)
                    ent = -(tl.exp() * tl).sum(-1)
                    vmap = vmaps.setdefault(id(tok), value_token_map(tok))
                    for j, cat, value in value_positions(tok, caps[i], parser, vmap):
                        acc = sums[f"value_{cat}"]
                        r, w = value_masses(sl[j], cat, value, vmap)
                        acc[f"{name}_value_acc"] += r / max(r + w, 1e-9)
                        if si == 0:
                            r, w = value_masses(tl[j], cat, value, vmap)
                            acc["tokens"] += 1
                            acc["teacher_value_acc"] += r / max(r + w, 1e-9)
                    for j, g in enumerate(groups):
                        key = "clue" if g else "other"
                        acc = sums[key]
                        acc[f"{name}_ce"] += float(s_ce[j])
                        acc[f"{name}_kl"] += float(kl[j])
                        acc[f"{name}_top1"] += float(sl[j].argmax() == target[j])
                        if si == 0:
                            acc["tokens"] += 1
                            acc["teacher_ce"] += float(t_ce[j])
                            acc["teacher_entropy"] += float(ent[j])
                            acc["teacher_top1"] += float(tl[j].argmax() == target[j])
        table = {}
        for key in ("clue", "other", *(f"value_{c}" for c in CATEGORIES)):
            acc = sums[key]
            n = max(acc["tokens"], 1)
            table[key] = {"tokens": int(acc["tokens"])} | {
                k: round(v / n, 4) for k, v in acc.items() if k != "tokens"}
        total = sum(sums[k]["tokens"] for k in ("clue", "other"))
        excess = {}
        for spec in args.student:
            name = spec.split("=", 1)[0]
            ex = {k: sums[k][f"{name}_ce"] - sums[k]["teacher_ce"] for k in ("clue", "other")}
            excess[name] = round(ex["clue"] / max(ex["clue"] + ex["other"], 1e-9), 4)
        out["splits"][split] = {"tokens": int(total), "clue_token_share": round(sums["clue"]["tokens"] / max(total, 1), 4),
                                "share_of_student_excess_ce_at_clue_tokens": excess,
                                "captions_skipped": int(sums["skipped"]["captions"]), **table}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
