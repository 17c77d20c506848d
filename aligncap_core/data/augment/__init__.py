"""Seeded audio augmentation of a prepared dataset whose labels stay physically true.

    augment_dataset("runs/prep", "runs/prep-aug", AugmentConfig(copies=2, seed=0))
    aligncap data augment runs/prep runs/prep-aug --copies 2 --seed 0 [--config augment.yaml]

Only `train` rows are augmented. valid, test and zeroshot rows are copied unchanged and never
get augmented copies, so evaluation always runs on the clips as synthesised or recorded.

Transforms (each with `enabled` and `p`, the chance that it is applied to a copy; a copy that
draws none gets one enabled transform chosen uniformly, so no copy is a plain duplicate):

| name     | what it does                                            | moves labels      |
|----------|---------------------------------------------------------|-------------------|
| speed    | resample_poly speed change: F0 x s, duration / s        | pitch, speed      |
| tempo    | WSOLA time-stretch (F0 kept): duration / f              | speed             |
| pitch    | WSOLA stretch + resample_poly: F0 x 2^(st/12), same     | pitch             |
|          | duration                                                |                   |
| gain     | multiply by 10^(dB/20)                                  | volume            |
| resample | sr -> 8 or 16 kHz -> sr (soxr VHQ): band-limits to the   | none              |
|          | intermediate Nyquist                                    |                   |
| reverb   | exponentially decaying noise impulse response (RT60 s), | none              |
|          | mixed wet/dry at the dry level; the tail lengthens the  |                   |
|          | clip by up to RT60                                      |                   |
| noise    | white or pink noise at an SNR from a list (>= 10 dB)    | none              |

tempo, pitch and gain have two modes. `range` draws the amount from a configured range.
`target` picks a label for the attribute the transform moves, from the labels that are
reachable within `max_*` (and, with `emotion_consistent`, allowed by the clip's emotion
profile), then aims at that label's band centre (`profiles.TARGET`) with some jitter. A target
can be the clip's current label. speed always uses `range`.

Relabelling. A row of the built-in corpus carries `measured`: its F0, duration and level
relative to the same voice's normal rendering of the same sentence (f0_ratio, duration_ratio,
level_db_diff; `checks.compare`). The reference is rebuilt from the row and the stored clip as
measured here: ref_f0 = f0(clip) / f0_ratio, ref_duration = duration(clip) / duration_ratio,
ref_level = level(clip) - level_db_diff. The stored clip is measured again, not taken from
`measured`, because `prepare` resampled it (22.05 -> 24 kHz moves the YIN F0 by up to 2%); this
way an unchanged clip measures exactly its row's ratios. After the label-moving transforms
(always applied first) the clip is measured again (`measure.measure`), compared with the
reference (`checks.compare`) and each of pitch, speed and volume gets the label whose band in
`checks.THRESHOLDS` contains the new value; then `checks.check` must pass (>= 10 voiced frames,
peak < 0.99). A value in the gap between two bands is never guessed: the copy is rejected.

speed and pitch resample the signal, so the formants (timbre) move with F0 by the same factor
while the speaker's gender label is kept; that is why the defaults stay within +-5% (speed) and
5 semitones (pitch: formants moved by at most 33%). tempo keeps F0 and formants.
Formant-preserving shifts (LPC residual, cepstral envelope correction) were tried and left out
of the defaults: on the espeak voices they changed octave-band levels by up to 9 dB. The
`voice` transform and `pitch.keep_formants: true` use the cepstral envelope warp
(`channel.formant_warp`) anyway, for copies whose point is a vocal tract that stays while F0
moves (a high-pitched man, a low-pitched woman); the level is checked like every copy's.

Degradations (resample, reverb, noise) are applied after the relabelling and do not change the
labels: they change the channel, not how the speaker spoke. Assumptions: at SNR >= 10 dB the
pitch and speed of the speech stay plainly audible (lower SNRs are a config error); the reverb
is mixed at the dry level. Re-measuring F0 and duration on a noisy or reverberant clip would
measure the noise floor and the tail rather than the speech, so these are not re-measured.
The level is checked instead: the degraded clip's power over the frames that were speech in
the clean clip must still pass the volume check, and the peak must stay below 0.99.

Captions. Captions depend only on the labels and on a few measured gates ("almost shouting"
needs level_db_diff >= 6, "almost whispering" <= -8, "monotone"/"flat" spread_ratio <= 0.5,
"sing-song"/"expressive" >= 1.5). When a label or a gate changes, the captions are rewritten by
the corpus's own generator (`captions.write_captions`, seeded per copy, same number of
captions) and `caption_attributes` with them; otherwise the source captions are kept.

Rejects. A copy is never dropped silently: it is kept or written to `rejects.jsonl` with a
reason from `REJECT_REASONS` and counted; kept + rejected == produced. With
`emotion_consistent` (default) a copy whose new label the corpus never draws for its emotion
signature (a loud "sad" clip) is rejected: the emotion label must stay true too.
Train rows without a
reference (`measured` / pitch-speed-volume attributes, e.g. real data) are not augmented and
are counted under `skipped`.

Output folder (a prepared dataset, usable by `data clues` / `data tokenize` / training):
    manifest.jsonl    every source row (audio copied) followed by its kept copies. A copy has id
                      `<id>-aug<k>`, `augmented_from`, `augment` {copy, transforms with their
                      parameters, labels_before when a label changed, captions kept or
                      regenerated, check of the degraded level}, new `attributes`, `measured`,
                      `audio_sha256`, `duration_s`; `source_audio`/`source_sha256` name the
                      source clip. Stale keys are removed: `codes` from every row (re-run `data
                      tokenize`), `sha256` (the synth PCM hash) from copies, and `clues`,
                      `clue_attributes`, `p_act` from copies whose captions were rewritten
                      (re-run `data clues`).
    rejects.jsonl     id, augmented_from, reason, message, augment, measured, attributes
    augment.json      config and counts (no timings: reproducible byte for byte)
    fingerprint.json  like prepare's (content hash of the kept rows and the settings)
    audio/<id>.wav    mono float32 WAV at the source rate (`audio.encode_wav`)

Determinism: every draw for copy k of row `id` comes from `default_rng([seed, hash(id), k,
...])`, one stream per transform, so the output is byte-identical for a seed and does not
depend on the row order or on the other rows. Audio files already on disk with identical bytes
are left alone, files are replaced atomically and the manifest is written last, so an
interrupted run leaves the previous output readable and a re-run rewrites nothing.
"""

from aligncap_core.data.augment.config import (
    DEGRADE,
    MIN_SNR_DB,
    ORDER,
    PROSODY,
    AugmentConfig,
    GainConfig,
    NoiseConfig,
    PitchConfig,
    ResampleConfig,
    ReverbConfig,
    SpeedConfig,
    TempoConfig,
    load_augment_config,
)
from aligncap_core.data.augment.dataset import augment_dataset
from aligncap_core.data.augment.plan import plan_copy
from aligncap_core.data.augment.relabel import (
    REJECT_REASONS,
    Outcome,
    allowed_labels,
    augment_clip,
    has_reference,
    label_for,
    reference,
)
from aligncap_core.data.augment.transforms import (
    active_mask,
    add_noise,
    add_reverb,
    apply_transform,
    band_limit,
    level_over,
    noise_signal,
    pitch_shift,
    reverb_ir,
    speed_change,
    wsola,
)

__all__ = [
    "DEGRADE",
    "MIN_SNR_DB",
    "ORDER",
    "PROSODY",
    "REJECT_REASONS",
    "AugmentConfig",
    "GainConfig",
    "NoiseConfig",
    "Outcome",
    "PitchConfig",
    "ResampleConfig",
    "ReverbConfig",
    "SpeedConfig",
    "TempoConfig",
    "active_mask",
    "add_noise",
    "add_reverb",
    "allowed_labels",
    "apply_transform",
    "augment_clip",
    "augment_dataset",
    "band_limit",
    "has_reference",
    "label_for",
    "level_over",
    "load_augment_config",
    "noise_signal",
    "pitch_shift",
    "plan_copy",
    "reference",
    "reverb_ir",
    "speed_change",
    "wsola",
]
