"""Human-style reference captions from a phrase bank, with the attributes each one states.

`write_captions` returns captions like "A woman talks quickly in a high-pitched voice,
sounding cheerful." or "Clearly furious, the man speaks rapidly and loudly." together with a
dict per caption of the attribute values it expresses (`caption_attributes`). That dict is
ground truth for the clue parser, so every phrase here is unambiguous and true for the clip:

- words are chosen per attribute *value*; a word is only ever used for a value it states, e.g.
  "low" never describes a voice alone (it could mean quiet), "shrill" only for high pitch that
  is not soft, "almost shouting" only for clearly loud clips;
- every attribute is stated in most captions, `normal` values included ("at an ordinary pace",
  "at a conversational volume", "in a medium-pitched voice"): a caption that leaves an
  attribute out teaches a captioner to leave it out, and a reader of the references could not
  tell "normal" from "not said" (`MENTION_P`);
- no negations ("not fast"), no hedged or mixed attributes, no intensity words ("very",
  "furious"): the corpus does not vary intensity, so a caption never claims one;
- tone words that are not in the vocabulary ("monotone", "sing-song") appear only when the
  measured F0 spread supports them, and are not recorded.
"""

from __future__ import annotations

import numpy as np

# --- emotion words: plain and mild adjectives, and nouns ----------------------------------
EMOTION_WORDS: dict[str, dict[str, list[str]]] = {
    "neutral": {"plain": ["neutral", "matter-of-fact", "unemotional", "emotionally neutral"]},
    "calm": {"plain": ["calm", "relaxed", "composed", "peaceful", "serene"]},
    "happy": {"plain": ["happy", "cheerful", "joyful", "glad", "upbeat"], "mild": ["pleased"]},
    "sad": {"plain": ["sad", "gloomy", "unhappy", "sorrowful", "melancholy"], "mild": ["downcast"]},
    "angry": {"plain": ["angry", "cross"], "mild": ["annoyed", "irritated", "displeased"]},
    "fearful": {"plain": ["scared", "afraid", "frightened", "fearful", "anxious"],
                "mild": ["uneasy", "worried", "nervous"]},
    "surprised": {"plain": ["surprised", "amazed", "startled"]},
    "disgusted": {"plain": ["disgusted", "repulsed"]},
    "bored": {"plain": ["bored", "indifferent", "uninterested", "apathetic"]},
}
EMOTION_NOUNS: dict[str, dict[str, list[str]]] = {
    "calm": {"plain": ["calm", "calmness"]},
    "happy": {"plain": ["joy", "happiness", "cheer", "delight"]},
    "sad": {"plain": ["sadness", "sorrow", "gloom"]},
    "angry": {"plain": ["anger"], "mild": ["irritation", "annoyance"]},
    "fearful": {"plain": ["fear", "anxiety", "dread"], "mild": ["unease", "nervousness"]},
    "surprised": {"plain": ["surprise", "amazement"]},
    "disgusted": {"plain": ["disgust", "revulsion"]},
    "bored": {"plain": ["boredom", "indifference"]},
}
# Share of captions that state each attribute (every value, `normal` included); the emotion is
# left out of at most one caption per clip.
MENTION_P = {"emotion": 0.95, "gender": 0.93, "pitch": 0.93, "speed": 0.93, "volume": 0.93}

# --- prosody: adverbials (after a verb), voice adjectives, delivery adjectives ---------------
ADVERBIALS: dict[str, dict[str, list[str]]] = {
    "pitch": {"high": ["at a high pitch", "in a high register"],
              "low": ["at a low pitch", "in a low register", "in a deep tone"],
              "normal": ["at a normal pitch", "at an ordinary pitch", "at a moderate pitch",
                         "at an average pitch", "at a natural pitch"]},
    "speed": {"fast": ["quickly", "rapidly", "fast", "hurriedly", "at a fast pace", "at a rapid pace",
                       "at a quick tempo"],
              "slow": ["slowly", "at a slow pace", "in a slow, drawn-out way", "at a sluggish pace"],
              "normal": ["at an ordinary pace", "at a normal speed", "at a moderate pace",
                         "at an average speed", "at a normal tempo", "at a steady pace",
                         "at a comfortable pace", "at a conversational pace"]},
    "volume": {"loud": ["loudly", "at a loud volume"],
               "soft": ["softly", "quietly", "in a hushed way"],
               "normal": ["at a moderate volume", "at a normal volume", "at a conversational volume",
                          "at a comfortable volume", "at an average volume"]},
}
VOICE_ADJS: dict[str, dict[str, list[str]]] = {
    "pitch": {"high": ["high-pitched", "high", "squeaky"], "low": ["deep", "low-pitched"],
              "normal": ["medium-pitched", "mid-pitched", "normal-pitched", "mid-range"]},
    "volume": {"loud": ["loud"], "soft": ["quiet", "soft", "hushed"]},
}
DELIVERY_ADJS: dict[str, dict[str, list[str]]] = {
    "speed": {"fast": ["fast", "rapid", "quick", "hurried"], "slow": ["slow", "drawn-out", "sluggish", "unhurried"],
              "normal": ["moderately paced", "normally paced", "evenly paced"]},
    "volume": {"loud": ["loud"], "soft": ["quiet", "soft", "hushed"]},
}

SUBJECTS = {"female": ["A woman", "A female speaker", "The woman", "The female speaker", "A lady"],
            "male": ["A man", "A male speaker", "The man", "The male speaker", "A gentleman"],
            None: ["The speaker", "Someone", "A person"]}
PRONOUN = {"female": "she", "male": "he", None: "the speaker"}
POSSESSIVE = {"female": "her", "male": "his", None: "the speaker's"}
NOUN_POSSESSIVE = {"female": ["the woman's", "the female speaker's"], "male": ["the man's", "the male speaker's"],
                   None: ["the speaker's"]}
GENDER_NOUNS = {"female": ["woman", "female speaker", "lady"], "male": ["man", "male speaker", "gentleman"],
                None: ["speaker", "person"]}
GENDER_ADJS = {"female": ["female", "woman's"], "male": ["male", "man's"], None: [""]}
VERBS = ["speaks", "talks", "says something", "reads a sentence", "delivers the line", "says the sentence"]
VERBS_ING = ["speaking", "talking", "saying something", "reading a sentence", "delivering the line"]
SEEMS = ["sounding", "seeming", "coming across as"]


def _a(word: str) -> str:
    """The indefinite article for `word`."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


PARTICIPLES = ("almost shouting", "almost whispering")  # read best last, after a comma


def _join_advs(advs: list[str]) -> str:
    plain = [a for a in advs if a not in PARTICIPLES]
    trailing = [a for a in advs if a in PARTICIPLES]
    return ", ".join(x for x in (_join(plain), *trailing) if x)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


class _Caption:
    """Chooses words for one caption and records which attribute values they state."""

    def __init__(self, rng: np.random.Generator, attrs: dict[str, str], measured: dict[str, float]):
        self.rng, self.attrs, self.measured = rng, attrs, measured
        self.stated: dict[str, str] = {}

    def pick(self, options: list[str]) -> str:
        return options[int(self.rng.integers(len(options)))]

    def emotion_adj(self) -> str:
        emo = self.attrs["emotion"]
        bank = EMOTION_WORDS[emo]
        self.stated["emotion"] = emo
        if bank.get("mild") and self.rng.random() < 0.2:
            return self.pick(bank["mild"])
        return self.pick(bank["plain"])

    def emotion_noun(self) -> str:
        emo = self.attrs["emotion"]
        bank = EMOTION_NOUNS[emo]
        self.stated["emotion"] = emo
        if bank.get("mild") and self.rng.random() < 0.2:
            return self.pick(bank["mild"])
        return self.pick(bank["plain"])

    def subject(self, gendered: bool) -> tuple[str, str | None]:
        g = self.attrs["gender"] if gendered else None
        if g:
            self.stated["gender"] = g
        return self.pick(SUBJECTS[g]), g


def _prosody_plan(c: _Caption) -> list[str]:
    """Which prosody attributes this caption states: each with probability MENTION_P, whatever
    its value."""
    return [attr for attr in ("pitch", "speed", "volume") if c.rng.random() < MENTION_P[attr]]


def _tone_adj(c: _Caption) -> list[str]:
    """Intonation words backed by the measured F0 spread (not vocabulary attributes)."""
    spread = c.measured.get("spread_ratio", 1.0)
    if spread <= 0.5 and c.rng.random() < 0.4:
        return [c.pick(["monotone", "flat"])]
    if spread >= 1.5 and c.rng.random() < 0.3:
        return [c.pick(["sing-song", "expressive"])]
    return []


def _realise(c: _Caption, attrs: list[str], voice_slot: bool, delivery: bool = False):
    """Split the stated attributes into adverbials and voice / delivery adjectives."""
    advs, voice, deliv = [], [], []
    for attr in attrs:
        value = c.attrs[attr]
        c.stated[attr] = value
        if delivery and value in DELIVERY_ADJS.get(attr, {}) and attr != "pitch":
            deliv.append(c.pick(DELIVERY_ADJS[attr][value]))
        elif voice_slot and value in VOICE_ADJS.get(attr, {}) and (attr == "pitch" or c.rng.random() < 0.4):
            options = list(VOICE_ADJS[attr][value])
            if attr == "pitch" and value == "high" and c.attrs["volume"] != "soft":
                options.append("shrill")
            voice.append(c.pick(options))
        else:
            options = list(ADVERBIALS[attr][value])
            if attr == "volume" and value == "loud" and c.measured.get("level_db_diff", 0) >= 6.0:
                options.append("almost shouting")
            if attr == "volume" and value == "soft" and c.measured.get("level_db_diff", 0) <= -8.0:
                options.append("almost whispering")
            advs.append(c.pick(options))
    if voice_slot:
        voice = voice + _tone_adj(c)
    c.rng.shuffle(advs)
    return advs, voice, deliv


def _voice_np(voice: list[str]) -> str:
    return f"{_a(voice[0])} {', '.join(voice)} voice" if voice else ""


# Each structure returns a caption or None when it cannot express this plan (then another
# structure is tried). `emo` says whether the caption should state the emotion.

def _s_manner_then_emotion(c, emo, gendered, plan):
    subj, g = c.subject(gendered)
    advs, voice, _ = _realise(c, plan, voice_slot=True)
    s = f"{subj} {c.pick(VERBS)}"
    if advs:
        s += " " + _join_advs(advs)
    if voice:
        s += " in " + _voice_np(voice)
    if emo:
        s += f", {c.pick(SEEMS)} {c.emotion_adj()}"
    return s + "."


def _s_emotion_first(c, emo, gendered, plan):
    if not emo:
        return None
    adj = c.emotion_adj()
    # "Audibly neutral" reads oddly: neutral and calm only follow "Sounding".
    plain_lead = c.attrs["emotion"] in ("neutral", "calm")
    lead = "Sounding" if plain_lead else c.pick(
        ["Sounding", "Clearly", "Audibly", "Obviously"])
    subj, g = c.subject(gendered)
    advs, voice, _ = _realise(c, plan, voice_slot=True)
    s = f"{lead} {adj}, {subj[0].lower() + subj[1:]} {c.pick(VERBS)}"
    if advs:
        s += " " + _join_advs(advs)
    if voice:
        s += " in " + _voice_np(voice)
    return s + "."


def _s_sounds(c, emo, gendered, plan):
    if not emo:
        return None
    subj, g = c.subject(gendered)
    s = f"{subj} {c.pick(['sounds', 'seems', 'comes across as'])} {c.emotion_adj()}"
    advs, voice, _ = _realise(c, plan, voice_slot=True)
    if advs or voice:
        s += f" and {c.pick(VERBS)}"
        if advs:
            s += " " + _join_advs(advs)
        if voice:
            s += " in " + _voice_np(voice)
    return s + "."


def _s_voice_fragment(c, emo, gendered, plan):
    g = c.attrs["gender"] if gendered else None
    if g:
        c.stated["gender"] = g
    advs, voice, _ = _realise(c, plan, voice_slot=True)
    words = ([c.emotion_adj()] if emo else []) + voice
    gadj = c.pick(GENDER_ADJS[g])
    head = ", ".join(words)
    np_ = " ".join(w for w in (head, gadj, "voice") if w)
    s = f"{_a(np_)} {np_}"
    if advs:
        s += f" {c.pick(VERBS_ING)} {_join_advs(advs)}"
    elif not words:
        return None
    return _cap(s) + "."


def _s_emotional_person(c, emo, gendered, plan):
    if not emo:
        return None
    adj = c.emotion_adj()
    g = c.attrs["gender"] if gendered else None
    if g:
        c.stated["gender"] = g
    noun = c.pick(GENDER_NOUNS[g])
    advs, voice, _ = _realise(c, plan, voice_slot=True)
    s = f"{_a(adj)} {adj} {noun} {c.pick(VERBS)}"
    if advs:
        s += " " + _join_advs(advs)
    if voice:
        s += " in " + _voice_np(voice)
    return _cap(s) + "."


def _s_descriptive(c, emo, gendered, plan):
    if "volume" in plan and c.attrs["volume"] == "normal":
        return None  # normal volume has no natural predicate adjective
    g = c.attrs["gender"] if gendered else None
    if g:
        c.stated["gender"] = g
    advs, voice, deliv = _realise(c, plan, voice_slot=True, delivery=True)
    if advs or not (voice or deliv):
        return None
    owner = c.pick(NOUN_POSSESSIVE[g])
    parts = []
    if deliv:
        parts.append(f"{owner} speech is {_join(deliv)}")
    if voice:
        parts.append(f"{POSSESSIVE[g] if deliv else owner} voice is {_join(voice)}")
    s = ", and ".join(parts)
    if emo:
        s += f"; {PRONOUN[g]} sounds {c.emotion_adj()}"
    return _cap(s) + "."


def _s_voice_first(c, emo, gendered, plan):
    advs, voice, _ = _realise(c, plan, voice_slot=True)
    if not voice:
        return None
    subj, g = c.subject(gendered)
    s = f"In {_voice_np(voice)}, {subj[0].lower() + subj[1:]} {c.pick(VERBS)}"
    if advs:
        s += " " + _join_advs(advs)
    if emo:
        s += f"; {PRONOUN[g]} sounds {c.emotion_adj()}"
    return s + "."


def _s_tone_in_voice(c, emo, gendered, plan):
    if not emo:
        return None
    g = c.attrs["gender"] if gendered else None
    if g:
        c.stated["gender"] = g
    noun = c.emotion_noun() if c.attrs["emotion"] in EMOTION_NOUNS else None
    advs, voice, _ = _realise(c, plan, voice_slot=False)
    owner = c.pick(NOUN_POSSESSIVE[g])
    if noun:
        s = f"There is {noun} in {owner} voice"
    else:
        adj = c.emotion_adj()
        s = f"There is {_a(adj)} {adj} tone in {owner} voice"
    if advs:
        s += f" as {PRONOUN[g]} {c.pick(VERBS)} {_join_advs(advs)}"
    return s + "."


def _s_manner_with_noun(c, emo, gendered, plan):
    if not emo or c.attrs["emotion"] not in EMOTION_NOUNS:
        return None
    subj, g = c.subject(gendered)
    advs, voice, _ = _realise(c, plan, voice_slot=True)
    s = f"{subj} {c.pick(VERBS)}"
    if advs:
        s += " " + _join_advs(advs)
    if voice:
        s += " in " + _voice_np(voice)
    return s + f", {c.pick(['full of', 'with obvious', 'with clear', 'filled with'])} {c.emotion_noun()}."


STRUCTURES = (_s_manner_then_emotion, _s_emotion_first, _s_sounds, _s_voice_fragment,
              _s_emotional_person, _s_descriptive, _s_voice_first, _s_tone_in_voice,
              _s_manner_with_noun)


def write_captions(rng: np.random.Generator, attrs: dict[str, str], measured: dict[str, float],
                   n: int = 4) -> tuple[list[str], list[dict[str, str]]]:
    """`n` distinct captions for a clip and, parallel to them, the attribute values each states.

    attrs: the clip's labels (emotion, pitch, speed, volume, gender).
    measured: the row's `measured` dict (gates "almost shouting", "monotone", ...).
    """
    captions: list[str] = []
    stated: list[dict[str, str]] = []
    for _ in range(50 * n):
        # At most one caption in n leaves the emotion out, so every clip has n-1 that state it.
        without_emotion = len(captions) - sum("emotion" in s for s in stated)
        emo = True if without_emotion >= 1 else bool(rng.random() < MENTION_P["emotion"])
        gendered = bool(rng.random() < MENTION_P["gender"])
        c = _Caption(rng, attrs, measured)
        plan = _prosody_plan(c)
        if not emo and not plan:
            plan = [a for a in ("pitch", "speed", "volume") if attrs[a] != "normal"] or ["speed"]
        text = STRUCTURES[int(rng.integers(len(STRUCTURES)))](c, emo, gendered, plan)
        if text is None or text in captions:
            continue
        captions.append(text)
        stated.append(dict(sorted(c.stated.items())))
        if len(captions) == n:
            break
    if len(captions) < n:  # never seen; the bank is far larger than n
        raise RuntimeError(f"could only write {len(captions)} distinct captions for {attrs}")
    return captions, stated
