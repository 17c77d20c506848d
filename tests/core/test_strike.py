"""Striking an unsure statement out of a chosen caption (inference.strike, the consistent
decoder's step 5), read back by the real clue parser."""

from __future__ import annotations

import pytest

from aligncap_core.inference.strike import edits, strike


@pytest.fixture(scope="module")
def parser():
    from aligncap_core.clues import EmotionClueParser

    return EmotionClueParser()


def _strike(parser, text, attr):
    (p,) = parser.parse_many([text])
    texts, said, struck = strike([text], [p.attributes], [[attr]], [p], parser)
    return texts[0], said[0], struck[0], p.attributes


# (caption, attribute struck, what is left): captions of the demo's students
CASES = [
    # an emotion's lead-in goes with it
    ("A woman says the sentence at a normal volume and at an ordinary pace in a low-pitched voice, "
     "coming across as repulsed.", "emotion",
     "A woman says the sentence at a normal volume and at an ordinary pace in a low-pitched voice."),
    ("In an expressive voice, the speaker says something at an average volume and at an average "
     "speed; the speaker sounds repulsed.", "emotion",
     "In an expressive voice, the speaker says something at an average volume and at an average speed."),
    ("A woman sounds startled and says the sentence at a comfortable pace in a deep voice.", "emotion",
     "A woman says the sentence at a comfortable pace in a deep voice."),
    ("Audibly pleased, a male speaker says something at a loud volume in a high-pitched voice.",
     "emotion", "A male speaker says something at a loud volume in a high-pitched voice."),
    # a phrase with its preposition and one of the separators around it
    ("A female speaker says something at a steady pace and at a normal volume in a squeaky voice.",
     "speed", "A female speaker says something at a normal volume in a squeaky voice."),
    ("A male speaker says something at a normal speed and at a loud volume in a high-pitched voice.",
     "volume", "A male speaker says something at a normal speed in a high-pitched voice."),
    # one of a list of adjectives
    ("A cross, high-pitched, loud male voice saying something at a loud volume.", "emotion",
     "A high-pitched, loud male voice saying something at a loud volume."),
    ("The speaker's speech is hurried and loud, and the speaker's voice is shrill.", "speed",
     "The speaker's speech is loud, and the speaker's voice is shrill."),
    # the article fits the word after the cut
    ("An angry, squeaky female voice saying something at a loud volume.", "emotion",
     "A squeaky female voice saying something at a loud volume."),
    # gender: the adjective goes, the noun becomes "speaker"
    ("A bored female speaker says the sentence at a sluggish pace in a deep voice.", "gender",
     "A bored speaker says the sentence at a sluggish pace in a deep voice."),
    ("A man says something at a normal volume in a deep voice.", "gender",
     "A speaker says something at a normal volume in a deep voice."),
]


@pytest.mark.parametrize(("text", "attr", "left"), CASES)
def test_the_statement_goes_and_the_rest_reads_the_same(parser, text, attr, left):
    out, said, struck, before = _strike(parser, text, attr)
    assert out == left and struck == [attr]
    assert attr in before and said == {a: v for a, v in before.items() if a != attr}
    assert parser.parse_many([out])[0].attributes == said  # what the caller is told it says


def test_a_caption_no_deletion_reads_right_is_kept(parser):
    # the emotion is the subject of the sentence: deleting it leaves "There is in the man's voice"
    text = "There is anger in the man's voice as he says the sentence at a high pitch and loudly."
    out, said, struck, before = _strike(parser, text, "emotion")
    assert (out, said, struck) == (text, before, [])
    # a value stated twice in the same word: one deletion cannot take it out
    text = "A pleased, high-pitched, loud male voice saying something at a loud volume."
    out, _, struck, _ = _strike(parser, text, "volume")
    assert (out, struck) == (text, [])


def test_two_statements_struck_one_after_the_other(parser):
    text = "The man's speech is slow and hushed, and his voice is flat."
    (p,) = parser.parse_many([text])
    texts, said, struck = strike([text], [p.attributes], [["speed", "volume"]], [p], parser)
    # speed goes ("slow and"); volume would leave "The man's speech is his voice is flat": kept
    assert texts == ["The man's speech is hushed, and his voice is flat."] and struck == [["speed"]]
    assert said[0] == {a: v for a, v in p.attributes.items() if a != "speed"}


def test_edits_never_leave_a_hole():
    # "at a steady pace" as a phrase, never "at a ... and at a" or "in a voice"
    for t in edits("A woman says something at a steady pace and at a normal volume.", "steady pace",
                   "speed"):
        assert "at a at" not in t and " and at a normal" not in t
    assert "in a voice" not in " ".join(edits("A man speaks slowly in a high-pitched voice.",
                                              "high-pitched", "pitch"))
    assert edits("A man speaks slowly.", "happy", "emotion") == []  # not in the caption
