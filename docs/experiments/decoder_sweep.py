"""Greedy against attribute-consistent decoding, and its settings, from one generation pass.

    .venv/bin/python docs/experiments/decoder_sweep.py CKPT DATA_DIR OUT.json \
        [--splits valid,zeroshot] [--limit 80] [--temperatures 0.5,0.8,1.0] [--samples 16]

For every clip: the greedy caption and `--samples` sampled captions at each temperature (the
captioner's own shared-prompt sampler, seeded), all parsed once. The consistent decoder's choice
(`inference.consistent.choose`, without its re-decoding step) is then replayed for every
(temperature, number of samples k <= --samples, risk) and scored with `eval.compute_metrics`
(no METEOR), beside greedy. Choose the settings on `valid`; `zeroshot` is reported, not tuned on.
Prints one JSON line per setting and split and writes them all to OUT.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ckpt")
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--splits", default="valid,zeroshot")
    ap.add_argument("--limit", type=int, default=80)
    ap.add_argument("--temperatures", default="0.5,0.8,1.0")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--risks", default="1,2,3,5")
    args = ap.parse_args(argv)

    from aligncap_core.eval import compute_metrics
    from aligncap_core.inference.captioner import Captioner
    from aligncap_core.inference.consistent import DecodingSettings, choose
    from aligncap_core.inference.evaluate import row_speech, select_rows
    from aligncap_core.model.generate import GenerationSettings
    from aligncap_core.train.data import read_rows

    cap = Captioner.load(args.ckpt, device="cpu")
    rows = select_rows(read_rows(args.data_dir), args.splits.split(","), args.limit)
    clips = [row_speech(cap, args.data_dir, r) for r in rows]
    gen = GenerationSettings(max_new_tokens=48)
    greedy = cap.caption_codes(clips, gen, DecodingSettings(strategy="greedy"))
    parser = cap.parser
    g_parsed = parser.parse_many(greedy)
    sampled: dict[float, list[list]] = {}
    for t in (float(x) for x in args.temperatures.split(",")):
        prompts = [cap.prompt_windows(c, gen.max_new_tokens)[0] for c in clips]  # clips fit one window
        from aligncap_core.model.generate import generate_captions
        from aligncap_core.prefs.candidates import audio_token_ids_of

        s = dataclasses.replace(gen, do_sample=True, num_return_sequences=args.samples,
                                temperature=t, top_p=0.95)
        texts = generate_captions(cap.model, cap.tokenizer, prompts, s,
                                  suppress_token_ids=audio_token_ids_of(cap.tokenizer), generator_seed=0)
        flat = parser.parse_many(texts)
        k = args.samples
        sampled[t] = [[(texts[i * k + j], flat[i * k + j]) for j in range(k)] for i in range(len(rows))]

    results: list[dict] = []

    def score(name: str, preds: list[str]) -> None:
        for split in args.splits.split(","):
            idx = [i for i, r in enumerate(rows) if r.get("split") == split]
            m = compute_metrics([preds[i] for i in idx], [rows[i].get("captions") or [] for i in idx],
                                [rows[i].get("attributes") for i in idx], parser=parser, meteor=False)
            keep = {k: m[k] for k in m if k == "hallucination_rate" or k == "clue_f1"
                    or k.startswith(("mention_", "acc_stated_"))}
            line = {"setting": name, "split": split, **keep}
            results.append(line)
            print(json.dumps(line), flush=True)

    score("greedy", greedy)
    for t, groups in sampled.items():
        for k in (4, 8, 16):
            if k > args.samples:
                continue
            for risk in (float(x) for x in args.risks.split(",")):
                preds = []
                for i in range(len(rows)):
                    cands = [(greedy[i], g_parsed[i]), *groups[i][:k]]
                    d = choose([p for _, p in cands], risk)
                    preds.append(cands[d.index][0])
                score(f"consistent T={t} k={k} risk={risk:g}", preds)
    args.out.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
