"""Describing words for voices, mapped onto the attribute vocabulary (ARCHITECTURE.md).

The lists are WordNet-style synonym sets written from how people describe voices (captioning
datasets, voice-acting notes, clinical "affect" vocabulary), not fitted to any corpus. Entries are
comma-separated; a multiword or hyphenated phrase is matched as a token sequence, and every
hyphenated phrase also matches written with a space or run together ("high-pitched",
"high pitched", "highpitched"). In a pattern, `*` matches any one token ("raise * voice").

Matching compares each pattern token with a text token's lower-case form *or* its lemma, so
inflections ("whispers", "whispered", "angrier") need no entries of their own.

Words whose meaning depends on what they describe ("low", "flat", "raised", "steady") are not
here but in `AMBIGUOUS`: the parser resolves them from the noun or verb they attach to.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LexEntry:
    """What a matched phrase means.

    category: emotion/pitch/speed/volume/tone/voice_quality/intensity.
    value: a vocabulary value, or None for words kept verbatim (tone, voice quality).
    resolver: name of an ambiguity rule in `AMBIGUOUS` (then category/value are decided in context).
    adj_only: only a clue when the tagger says ADJ (never in the blank fallback): "cross", "down".
    strong: the word itself names an intense emotion ("furious", "terrified").
    if_negated: (category, value) the phrase asserts when negated: "no hint of emotion" -> neutral.
    """

    category: str
    value: str | None = None
    resolver: str | None = None
    adj_only: bool = False
    strong: bool = False
    if_negated: tuple[str, str] | None = None


def phrase_list(text: str) -> list[str]:
    """The comma-separated phrases of a lexicon entry, lowercased, inner whitespace collapsed."""
    return [" ".join(w.split()).lower() for w in text.split(",") if w.strip()]


# --- emotion --------------------------------------------------------------------------------
EMOTION: dict[str, str] = {
    "happy": """happy, happily, happiness, joy, joyful, joyfully, joyous, joyously, elated, upbeat,
        cheerful, cheerfully, cheery, cheer, delighted, delightedly, delight, glad, gladly, gleeful,
        gleefully, glee, jubilant, jubilantly, merry, merrily, jolly, buoyant, bubbly, excited,
        excitedly, excitement, enthusiastic, enthusiastically, enthusiasm, pleased, amused,
        amusement, laughing, laughter, laugh, giggle, giggling, giggly, chuckle, chuckling, giddy,
        light-hearted, carefree, blissful, blissfully, radiant, beaming, exuberant, exuberance,
        chipper, perky, sunny, triumphant, triumphantly, gleeful, contented, satisfied, grateful,
        smiling, high spirits, in good spirits, good mood, playfully happy, celebratory, festive,
        happy-sounding, positive, tickled, overjoyed, thrilled, ecstatic, euphoric, elation, euphoria""",
    "sad": """sad, sadly, sadness, gloomy, gloomily, gloom, tearful, tearfully, teary, teary-eyed,
        sorrowful, sorrowfully, sorrow, melancholy, melancholic, downcast, unhappy, unhappily,
        depressed, depressing, depression, dejected, dejectedly, despondent, despondently,
        miserable, miserably, misery, mournful, mournfully, mourning, grief, grieving, grief-stricken,
        crestfallen, forlorn, forlornly, glum, glumly, woeful, woefully, doleful, dolefully, somber,
        sombre, somberly, weepy, crying, sob, sobbing, weeping, weep, in tears, close to tears,
        on the verge of tears, dispirited, disheartened, disappointed, disappointment, lonely,
        regretful, remorseful, anguished, anguish, despair, despairing, desolate, heavy-hearted,
        downhearted, down-hearted, low-spirited, morose, lugubrious, plaintive, plaintively,
        heartbroken, heartbreak, devastated, distraught, sorry-sounding, sad-sounding, wistful,
        wistfully, mopey, moping, bleak, hurt, choked up, pained, low spirits""",
    "angry": """angry, angrily, anger, enraged, rage, raging, annoyed, annoyance, annoyingly,
        furious, furiously, fury, irritated, irritation, irritable, irritably, hostile, hostility,
        mad, displeased, displeasure, irate, irately, livid, fuming, seething, outraged, outrage, indignant, indignantly,
        indignation, resentful, resentfully, resentment, aggravated, exasperated, exasperation,
        frustrated, frustration, heated, incensed, infuriated, wrathful, wrath, belligerent,
        aggressive, aggressively, snappy, snapping, snap, snarl, snarling, growl, growling, vexed,
        peeved, grumpy, grumpily, cranky, grouchy, huffy, combative, antagonistic, confrontational,
        rant, ranting, cross-sounding, angry-sounding, bitter, bitterly, bitterness, spiteful,
        venomous, fiery, heatedly, riled, riled up, worked up, ticked off, pissed, pissed off,
        up in arms, in a rage, in a temper, temper, ill-tempered, bad-tempered, short-tempered""",
    "fearful": """fearful, fearfully, fear, scared, afraid, anxious, anxiously, anxiety, nervous,
        nervously, nervousness, terrified, terror, panicked, panicky, panic, panicking, frightened,
        fright, worried, worriedly, worry, apprehensive, apprehensively, apprehension, uneasy,
        uneasily, unease, alarmed, timid, timidly, petrified, jittery, jumpy, edgy, on edge,
        frantic, frantically, fretful, fretting, dread, dreading, spooked, threatened, intimidated,
        paranoid, horrified, horror, fear-stricken, terror-stricken, panic-stricken, scared-sounding,
        fearfulness, trepidation, wary, warily, shaken, rattled, distressed, distress, scared stiff""",
    "surprised": """surprised, surprise, surprisedly, shocked, shock, stunned, astonished,
        astonishment, amazed, amazement, startled, astounded, dumbfounded, flabbergasted,
        taken aback, incredulous, incredulously, disbelieving, disbelief, awestruck, in awe,
        caught off guard, gobsmacked, surprised-sounding, thunderstruck, bewildered, bewilderment,
        amazed-sounding, wonderstruck, open-mouthed""",
    "disgusted": """disgusted, disgust, revolted, repulsed, contemptuous, contemptuously, contempt,
        disdainful, disdainfully, disdain, scornful, scornfully, scorn, sickened, nauseated,
        repelled, appalled, grossed out, loathing, revulsion, distaste, distasteful, sneer, sneering,
        repugnance, abhorrence, disgustedly, repelled, derisive, derisively, derision, sneeringly,
        snide, grossed-out, squeamish, offended, mocking, mockingly""",
    "bored": """bored, boredom, listless, listlessly, indifferent, indifferently, indifference,
        uninterested, disinterested, apathetic, apathetically, apathy, unenthusiastic, unenthusiastically, jaded, blase, blasé, lethargic, lethargy,
        disengaged, unengaged, half-hearted, half-heartedly, uninspired, lackluster, lacklustre,
        droning, drone, tedious, tediously,
        dull, dully, humdrum, unmotivated, unbothered, bored-sounding, yawning, yawn,
        world-weary, ho-hum, going through the motions""",
    "calm": """calm, calmly, calmness, serene, serenely, serenity, peaceful, peacefully, relaxed,
        relaxing, composed, composure, tranquil, tranquilly, placid, placidly, collected,
        unruffled, unflustered, untroubled, soothing, soothingly, easygoing, easy-going, laid-back,
        mellow, at ease, level-headed, even-tempered, cool-headed, poised, restful, reassuring,
        reassuringly, unhurried and calm, self-possessed, cool and collected, gentle and calm,
        patient, patiently, comforting""",
    "neutral": """neutral, neutrally, matter-of-fact, matter-of-factly, unemotional,
        unemotionally, emotionless, impassive, impassively, expressionless, deadpan, businesslike,
        dispassionate, dispassionately, unexpressive, affectless, neutral-sounding, factual,
        factually, detached, detachedly, neutral tone, without emotion,
        without any emotion, with no emotion, no emotion, devoid of emotion, lacking emotion,
        free of emotion, showing no emotion, flat affect, blank, stoic, stoically,
        objective, informational, level-toned, even-toned, noncommittal, poker-faced""",
}

# Words naming an intense emotion by themselves: they set intensity=strong like "very angry".
STRONG_EMOTION_WORDS = frozenset(phrase_list("""furious, furiously, fury, enraged, rage, raging, livid,
    seething, irate, incensed, infuriated, wrathful, terrified, terror, petrified, panicked,
    panic-stricken, terror-stricken, horrified, ecstatic, euphoric, overjoyed, elated, jubilant,
    devastated, heartbroken, distraught, anguished, sobbing, flabbergasted, astounded, appalled,
    loathing, in a rage, hysterical, panic, thrilled, astonished, astonishment, stunned, shocked,
    shock, despair, anguish, outraged, grief-stricken, revolted, sickened, euphoria, elation, miserable"""))

# --- pitch / speed / volume -----------------------------------------------------------------
PITCH: dict[str, str] = {
    "high": """high-pitched, higher-pitched, highly pitched, squeaky, squeakily, squeak, piercing,
        shrill, shrilly, squealing, squeal, screechy, screeching, screech, falsetto, soprano,
        treble, high register, upper register, pitched up, squeaky-voiced, childlike, piping,
        high voice, high-toned, helium, shrieking, shriek, shrieks, reedy, pitch rises, raised pitch,
        elevated pitch, heightened pitch, high-frequency""",
    "low": """low-pitched, lower-pitched, deep-voiced, deep-pitched, husky, huskily, gravelly,
        gravel-voiced, bass, bassy, baritone, basso, rumbling, rumble, low register, lower register,
        pitched down, sonorous, throaty, guttural, gruff, gruffly, growly, low-toned, deep-toned,
        low-frequency, lowered pitch, dropped pitch, whiskey-voiced, smoky, chesty, booming bass""",
    "normal": """normal pitch, average pitch, medium pitch, medium-pitched, mid-pitched, mid pitch,
        mid-range, midrange, moderate pitch, natural pitch, steady pitch, even pitch, level pitch,
        typical pitch, regular pitch, usual pitch, neutral pitch, comfortable pitch, middle register,
        conversational pitch, normal-pitched, ordinary pitch""",
}
SPEED: dict[str, str] = {
    "fast": """fast, quick, quickly, rapid, rapidly, brisk, briskly, hurried, hurriedly, rushed,
        rushing, rush, speedy, speedily, swift, swiftly, fast-paced, quick-paced, rapid-fire,
        racing, breakneck, hasty, hastily, in a hurry, in a rush, fast-talking, rattle off,
        rattling off, rattles off, sped-up, speed up, speeding up, quickened, accelerated,
        accelerating, pressured speech, zippy, snappy pace, at a clip, headlong, nonstop, spitfire,
        machine-gun, tumbling out, breathless pace, rapid pace, quick-fire""",
    "slow": """slow, slowly, leisurely, measured, drawn-out, unhurried, unhurriedly, sluggish,
        sluggishly, deliberate, deliberately, plodding, plod, dragging, drag, drawling, drawl,
        drawled, languid, languidly, ponderous, ponderously, stretched-out, slowed, slowed down,
        slow down, slowing, slow-paced, slow-moving, lingering, crawling, snail's pace, unrushed,
        drawn out, takes * time, taking * time, lumbering, sluggish pace, slow-talking,
        long pauses, elongated, prolonged""",
    "normal": """normal pace, normal speed, normal rate, normal tempo, moderate pace,
        moderate speed, moderate rate, moderate tempo, moderately paced, steady pace, even pace,
        average pace, average speed, average rate, regular pace, regular speed, natural pace,
        natural speed, conversational pace, conversational speed, medium pace, medium speed,
        medium tempo, usual pace, usual speed, typical pace, comfortable pace, steady rate,
        steady tempo, even tempo, normal speaking rate, normal-paced, evenly paced, steadily paced,
        neutral pace, neutral speed, neutral tempo""",
}
VOLUME: dict[str, str] = {
    "loud": """loud, loudly, booming, boom, shouting, shout, shouted, yelling, yell, yelled,
        thunderous, thundering, bellowing, bellow, roaring, roar, blaring, deafening, screaming,
        scream, screamed, raised voice, raise * voice, raising * voice, raises * voice, clamorous,
        noisy, noisily, resounding, strident, stridently, high volume, full volume, at full volume,
        top of * lungs, at the top of * lungs, hollering, holler, loud-voiced, loudmouthed,
        projecting, projected, forcefully loud, ear-splitting, earsplitting, blasting, boisterous,
        boisterously, rowdy, howling, howl, cry out, crying out, cries out, exclaim loudly""",
    "soft": """whispered, whisper, whispering, whispery, hushed, hush, quiet, quietly, quieter,
        soft, softly, soft-spoken, softspoken, muted, murmured, murmuring, murmur, mumbling, mumble,
        mumbled, faint, faintly, barely audible, hardly audible, scarcely audible, almost inaudible,
        inaudible, low volume, low-volume, lowered voice, lower * voice, lowers * voice,
        lowering * voice, drop * voice, drops * voice, dropping * voice, under * breath,
        sotto voce, feeble, feebly, weak voice, weakly, subdued volume, gentle volume, breathy
        whisper, hushed tones, muffled, quiet-voiced, soft-voiced, low-voiced, barely above a
        whisper, near-whisper, half-whisper, murmurous, mutter, muttering, muttered""",
    "normal": """normal volume, moderate volume, conversational volume, medium volume,
        normal loudness, average volume, average loudness, even volume, steady volume,
        regular volume, natural volume, normal level, moderate level, conversational level,
        moderate loudness, usual volume, typical volume, comfortable volume, normal speaking volume,
        moderately loud, medium loudness, indoor voice, neutral volume""",
}

# --- intensity and verbatim tone / voice quality --------------------------------------------
INTENSITY: dict[str, str] = {
    "strong": """intense, intensely, vehement, vehemently, impassioned, overwrought, emotionally
        charged, highly charged, full of emotion, with great intensity, with intensity,
        overwhelming emotion, highly emotional, hysterical, hysterically, extreme emotion,
        exaggerated, melodramatic, over the top""",
    "normal": """understated, restrained, low-key, mild emotion, subtle emotion, mild intensity,
        moderate intensity, normal intensity, controlled emotion, mildly emotional""",
}
TONE = """trembling, tremble, tremulous, tremulously, shaky, shakily, shaking, quivering, quiver,
    wavering, waver, wobbly, quavering, quaver, tense, tensely, tension, strained, warm, warmly,
    cold, coldly, icy, frosty, sarcastic, sarcastically, sarcasm, playful, playfully, teasing,
    serious, seriously, solemn, solemnly, gentle, gently, firm, firmly, stern, sternly, harsh,
    harshly, sharp, sharply, curt, curtly, clipped, terse, tersely, hesitant, hesitantly,
    hesitating, hesitation, halting, haltingly, stammering, stammer, stuttering, stutter,
    confident, confidently, assertive, assertively, pleading, pleadingly, begging, apologetic,
    apologetically, sincere, sincerely, earnest, earnestly, wry, wryly, dry, dryly, friendly,
    kind, kindly, tender, tenderly, affectionate, affectionately, urgent, urgently, desperate,
    desperately, energetic, energetically, lively, animated, animatedly, emphatic, emphatically,
    dramatic, dramatically, expressive, expressively, hopeful, hopefully, proud, proudly,
    defensive, defensively, authoritative, commanding, bossy, demanding, insistent, insistently,
    questioning, inquisitive, curious, curiously, uncertain, unsure, doubtful, skeptical,
    sceptical, suspicious, suspiciously, sighing, sigh, sighs, gasping, gasp, emotional,
    passionate, passionately, heartfelt, nostalgic, sympathetic, compassionate, pleading, whiny,
    whining, whine, whimpering, whimper, sing-song, singsong, melodic, melodious, musical,
    lilting, rhythmic, animated, bright, brightly, cheeky, flirtatious, flirty, seductive, sultry,
    formal, casual, conversational, chatty, talkative, rambling, robotic, mechanical, stilted,
    scripted, rehearsed, theatrical, exaggerated intonation, rising intonation, falling intonation,
    questioning intonation, expressive intonation, varied intonation, steady voice, even tone,
    high energy, low energy, high-energy, low-energy, energetic delivery, breathless, breathlessly,
    out of breath, panting, commanding presence, soothing voice, comforting tone, matter of fact,
    resigned, resignation, pensive, thoughtful, reflective, dreamy, wistful tone, gentle tone,
    agitated, agitation, upset, flustered, awkward, awkwardly, embarrassed, sheepish, sheepishly,
    shy, shyly, bashful, coy, sly, smug, smugly, condescending, patronizing, dismissive,
    dismissively, impatient, impatiently, exclamatory, exclaiming, exclaim, emphatic stress,
    strong voice, weak, fragile, tired, tiredly, weary, wearily, fatigued, sleepy, drowsy,
    exhausted, choked, straightforward, frail, heavy, heavily, light, lightly, crisp, crisply"""
VOICE_QUALITY = """breathy, breathily, raspy, rasp, rasping, hoarse, hoarsely, nasal, nasally,
    creaky, creak, croaky, croaking, croak, rough, roughly, smooth, smoothly, airy, thin, reedy
    voice, resonant, resonance, clear, clearly articulated, crisp voice, muffled voice, scratchy,
    raw, velvety, silky, silken, brassy, metallic, tinny, harsh voice, grainy, gritty, husky
    whisper, throaty laugh, vocal fry, fry, glottal, gravel, strangled, choked voice, cracking,
    cracked, cracks, voice cracks, voice breaking, breaking voice, wavering voice, tight, tightly,
    pressed, full-bodied, rich, booming resonance, mellifluous, honeyed, sweet, sweetly,
    lisping, lisp, slurred, slurring, slur, mumbly, enunciated, articulate, crisp diction,
    clipped diction, robotic voice, sharp voice, piping voice, warbling, warble,
    vibrato, wobble, quavery"""

# --- words resolved in context ---------------------------------------------------------------
# word -> rule name; the rules live in `RESOLUTIONS` and are keyed by the context class the
# parser finds (the head noun, the copula's subject, the verb an adverb modifies).
AMBIGUOUS: dict[str, str] = {
    **dict.fromkeys(phrase_list("high, higher, highest, higher-than-usual"), "high"),
    **dict.fromkeys(phrase_list("low, lower, lowest, lowly"), "low"),
    **dict.fromkeys(phrase_list("raised, elevated, heightened, increased, rising"), "raised"),
    **dict.fromkeys(phrase_list("lowered, reduced, dropped, decreased, falling, dropping"), "lowered"),
    **dict.fromkeys(phrase_list("""normal, normally, moderate, moderately, medium, average, regular,
        typical, usual, natural, standard, ordinary, middle, mid, comfortable"""), "normal"),
    **dict.fromkeys(phrase_list("steady, steadily, even, evenly, stable, consistent, constant"), "steady"),
    **dict.fromkeys(phrase_list("flat, flatly, flattened"), "flat"),
    **dict.fromkeys(phrase_list("monotone, monotonous, monotonously, monotonic"), "monotone"),
    **dict.fromkeys(phrase_list("deep, deeper, deepest, deeply-pitched"), "deep"),
}
# Nouns and verbs that decide an ambiguous word; a class name -> words.
CONTEXT_WORDS: dict[str, str] = {
    "pitch": """pitch, pitched, register, frequency, f0, intonation, inflection, octave, note, notes,
        key, fundamental, melody, contour, range""",
    "voice": "voice, voices, tone, tones, timbre, sound, voiced, toned",
    "seem": "sounds, sounding, sounded, seems, seem, seemed, seeming, feels, feel, feeling, appears, comes across",
    "volume": "volume, loudness, level, levels, decibel, decibels, amplitude, projection, gain",
    "speed": "pace, paced, speed, rate, tempo, pacing, cadence, delivery, speech rate, rhythm, clip",
    "intensity": "intensity, emotion, emotions, emotionality, feeling, feelings, arousal, passion, affect",
    "energy": "energy, spirit, spirits, enthusiasm level, mood",
    "breath": "breath, breaths, breathing, sigh, sighs, thought, thoughts, sleep",
    "speak": """speak, speaks, spoke, speaking, talk, talks, talked, talking, say, says, said, murmur,
        mutter, utter, sing, hum, read, reads, reply, replies, answer, answers, respond, tell,
        tells, ask, asks, whisper, call, calls, reply""",
}
# rule -> context class -> (category, value); value None keeps the word verbatim as a tone clue;
# a missing class falls back to the rule's "default" entry; `None` (not a tuple) drops the word.
RESOLUTIONS: dict[str, dict[str, tuple[str, str | None] | None]] = {
    "high": {"pitch": ("pitch", "high"), "voice": ("pitch", "high"), "volume": ("volume", "loud"),
             "speed": ("speed", "fast"), "intensity": ("intensity", "strong"), "energy": ("tone", None),
             "speak": ("pitch", "high"), "default": ("pitch", "high")},
    "low": {"pitch": ("pitch", "low"), "voice": ("pitch", "low"), "volume": ("volume", "soft"),
            "speed": ("speed", "slow"), "intensity": ("intensity", "normal"), "energy": ("tone", None),
            "speak": ("volume", "soft"), "default": ("pitch", "low")},
    "raised": {"pitch": ("pitch", "high"), "voice": ("volume", "loud"), "volume": ("volume", "loud"),
               "speed": ("speed", "fast"), "intensity": ("intensity", "strong"), "default": None},
    "lowered": {"pitch": ("pitch", "low"), "voice": ("volume", "soft"), "volume": ("volume", "soft"),
                "speed": ("speed", "slow"), "intensity": ("intensity", "normal"), "default": None},
    "normal": {"pitch": ("pitch", "normal"), "volume": ("volume", "normal"), "speed": ("speed", "normal"),
               "intensity": ("intensity", "normal"), "default": None},
    "steady": {"pitch": ("pitch", "normal"), "volume": ("volume", "normal"), "speed": ("speed", "normal"),
               "voice": ("tone", None), "speak": ("tone", None), "default": None},
    # "flat"/"monotone" describe the pitch contour ("a flat voice", "monotone delivery"), kept
    # verbatim; only said of the speaker's affect ("sounds flat", "flat affect") are they an emotion.
    "flat": {"seem": ("emotion", "neutral"), "intensity": ("emotion", "neutral"), "default": ("tone", None)},
    "monotone": {"seem": ("emotion", "bored"), "default": ("tone", None)},
    "deep": {"pitch": ("pitch", "low"), "voice": ("pitch", "low"), "speak": ("pitch", "low"),
             "default": ("pitch", "low"), "breath": None},
}

# --- modifiers, negation, gender, scope ------------------------------------------------------
INTENSIFIERS = frozenset(phrase_list("""very, extremely, really, so, incredibly, highly, deeply, truly,
    terribly, awfully, exceptionally, intensely, utterly, completely, totally, thoroughly, super,
    especially, particularly, exceedingly, immensely, hugely, tremendously, overwhelmingly,
    profoundly, absolutely, strongly, seriously, insanely, unbelievably, remarkably, extraordinarily,
    so very, very very, really very, ever so, clearly very, most, quite intensely, downright,
    painfully, wildly, visibly very, greatly, genuinely very"""))
DIMINISHERS = frozenset(phrase_list("""slightly, a bit, a little, a little bit, somewhat, mildly, faintly,
    a tad, kind of, kinda, sort of, fairly, moderately, marginally, a touch, a hint of, a tinge of,
    a trace of, a note of, a touch of, a bit of, a shade, slight, mild, subtle, subtly, faint,
    a slight, a mild, a subtle, a faint, a little more, just a little, partly, vaguely, gently,
    mostly, quite, rather, pretty, reasonably, relatively, comparatively, a note of, a hint,
    an undertone of, an edge of, a sense of"""))
# Modifiers that only modify an emotion ("deep sadness", "sheer terror"); before anything else
# they are clues of their own ("deep voice") or plain words.
EMOTION_ONLY_MODIFIERS = frozenset(phrase_list("""deep, great, intense, pure, sheer, utter, extreme,
    strong, profound, overwhelming, total, complete, real, genuine, obvious, palpable, evident, clear,
    barely concealed, barely contained, thinly veiled, slight, mild, subtle, faint"""))
# Strong adjectives count as intensifiers before an emotion word.
STRONG_ADJ_MODIFIERS = frozenset(phrase_list("""deep, great, intense, pure, sheer, utter, extreme, strong,
    profound, overwhelming, total, complete, barely concealed, barely contained"""))
COMPARATIVE_MODIFIERS = frozenset(phrase_list("""more, much, much more, far, far more, even, even more,
    way, a lot, a lot more, noticeably, audibly, distinctly, considerably, significantly, clearly,
    increasingly, a little more, somewhat more, slightly more"""))
MODIFIERS = INTENSIFIERS | DIMINISHERS | EMOTION_ONLY_MODIFIERS | COMPARATIVE_MODIFIERS

# A negation cue before a clue (same clause) means the clue is not asserted. "less" counts:
# "less loud" does not assert loud, and the opposite is not safe to assume either.
NEGATION_CUES = frozenset(phrase_list("""not, n't, never, no, without, nor, neither, lacks, lack, lacking,
    free of, devoid of, absence of, absent, hardly, barely, scarcely, rather than, instead of,
    as opposed to, far from, anything but, no longer, less, none, nothing, zero, not at all,
    not a trace of, not remotely, cannot, can't, isn't, doesn't, wasn't, won't, fails to,
    minus"""))
# Idioms that start with a negation word but do not negate what follows.
NON_NEGATING = frozenset(phrase_list("""no doubt, not only, not just, nothing but, no less, not merely,
    not least, no question, without a doubt, without doubt, never not, no wonder"""))
# Words that end the scope of a preceding negation (and of a modifier) in the window rules.
SCOPE_BREAKERS = frozenset(phrase_list("""but, yet, though, although, however, whereas, while, instead,
    still, ., ;, :, !, ?, (, ), --, —, –, because, so that, then""")) | {","}
# Verbs that predicate a clue of their subject: "the volume is low" -> look left for the noun.
COPULAS = frozenset(phrase_list("""is, was, are, were, be, been, being, 's, sounds, sound, sounded, seems,
    seem, seemed, remains, remain, stays, stay, becomes, become, became, gets, get, got, feels, feel,
    grows, turns, goes, appears, staying, remaining, getting, feeling, sounding, seeming, looking,
    looks, coming"""))

GENDER: dict[str, str] = {
    "male": """man, men, male, males, he, him, his, himself, boy, boys, gentleman, gentlemen, guy,
        guys, lad, masculine, sir, mr, mr., gent, fellow, dude, father, dad, grandfather,
        husband, son, brother, uncle, king, actor, baritone-voiced man""",
    "female": """woman, women, female, females, she, her, hers, herself, girl, girls, lady, ladies,
        gal, feminine, madam, ma'am, mrs, mrs., ms, ms., mother, mom, mum, grandmother, wife,
        daughter, sister, aunt, queen, actress""",
}
# Relatives and roles are often someone the speaker talks *about*; they only count when they
# are the subject (or no other gender word competes).
WEAK_GENDER = frozenset(phrase_list("""father, dad, grandfather, husband, son, brother, uncle, king, actor,
    mother, mom, mum, grandmother, wife, daughter, sister, aunt, queen, actress, sir, madam, ma'am,
    mr, mr., mrs, mrs., ms, ms."""))

# Emotion words describing these nouns describe content, not the voice ("sad news").
CONTENT_NOUNS = frozenset(phrase_list("""word, words, sentence, sentences, news, text, message, content,
    story, stories, line, lines, phrase, phrases, topic, subject, lyric, lyrics, transcript,
    statement, script, book, movie, film, song, music, letter, email, joke, jokes, event, events,
    situation, weather, day, memory, memories, ending, scene, meaning, headline, poem, report,
    announcement, thing, things, quote, remark"""))
# Prepositions whose object is someone/something other than the speaker ("to an angry customer").
OTHER_TARGET_PREPS = frozenset(phrase_list("about, to, at, toward, towards, for, against, over, regarding"))
# Nouns that stand for the speaker or the voice: a clue attached to them describes the speaker.
SPEAKER_NOUNS = frozenset(phrase_list("""voice, voices, tone, tones, speaker, person, man, woman, boy,
    girl, lady, gentleman, guy, narrator, delivery, speech, manner, way, pitch, volume, pace,
    speed, register, timbre, intonation, inflection, accent, utterance, reading"""))


def _variants(phrase: str) -> list[str]:
    """A hyphenated phrase also matches with spaces and run together."""
    out = [phrase]
    if "-" in phrase:
        out += [phrase.replace("-", " "), phrase.replace("-", "")]
    return out


def _degrees(word: str) -> list[str]:
    """Comparative and superlative of a plain adjective: louder/loudest, sadder, angrier."""
    if not word.isalpha() or len(word) < 3 or word.endswith(("ly", "ed", "ing", "ness", "ion", "ful", "ous", "ic", "ive")):
        return []
    if word.endswith("e"):
        return [word + "r", word + "st"]
    if word.endswith("y") and word[-2] not in "aeiou":
        return [word[:-1] + "ier", word[:-1] + "iest"]
    vowels = sum(ch in "aeiou" for ch in word)
    if vowels == 1 and word[-1] not in "aeiouwxy" and word[-2] in "aeiou" and word[-3] not in "aeiou":
        return [word + word[-1] + "er", word + word[-1] + "est"]  # sad -> sadder
    return [word + "er", word + "est"]


def build_entries() -> dict[str, LexEntry]:
    """The whole lexicon as phrase -> LexEntry (later tables do not override earlier ones)."""
    entries: dict[str, LexEntry] = {}

    def add(text: str, entry: LexEntry) -> None:
        for phrase in phrase_list(text):
            for v in _variants(phrase):
                entries.setdefault(v, entry)

    for word, rule in AMBIGUOUS.items():
        entries.setdefault(word, LexEntry("tone", None, resolver=rule))
    for table, category in ((PITCH, "pitch"), (SPEED, "speed"), (VOLUME, "volume"), (INTENSITY, "intensity")):
        for value, text in table.items():
            add(text, LexEntry(category, value))
    for value, text in EMOTION.items():
        for phrase in phrase_list(text):
            for v in _variants(phrase):
                entries.setdefault(v, LexEntry("emotion", value, strong=phrase in STRONG_EMOTION_WORDS))
    # POS-sensitive emotion words: a noun/verb/preposition reading would be wrong ("cross the
    # street", "calms down", "the content").
    for word, value in (("cross", "angry"), ("down", "sad"), ("blue", "sad"), ("content", "calm")):
        entries.setdefault(word, LexEntry("emotion", value, adj_only=True))
    # Denying emotion altogether is the one negation with an unambiguous opposite.
    add("emotion, emotions, feeling, feelings, expression, expressiveness, affect",
        LexEntry("intensity", None, if_negated=("emotion", "neutral")))
    add(TONE, LexEntry("tone"))
    add(VOICE_QUALITY, LexEntry("voice_quality"))
    # Degrees of single-word adjectives ("louder", "angrier") mean the same value; the lemmatizer
    # does not always reduce them (en_core_web_sm keeps "louder" when tagged as an adverb).
    for phrase, entry in list(entries.items()):
        if entry.category in ("pitch", "speed", "volume", "emotion", "tone", "voice_quality") and " " not in phrase:
            for form in _degrees(phrase):
                entries.setdefault(form, entry)
    return entries


def build_gender() -> dict[str, str]:
    return {w: value for value, text in GENDER.items() for w in phrase_list(text)}


def context_classes() -> dict[str, str]:
    return {w: cls for cls, text in CONTEXT_WORDS.items() for w in phrase_list(text)}
