"""Emotion grammar parser, acoustic prompts and manifest clue annotation (method steps 2-3).

    parser = EmotionClueParser()                 # or EmotionClueParser(backend="blank")
    result = parser.parse("A woman speaks very quickly, sounding anxious.")
    p_act = build_acoustic_prompt(result)        # "Emotional clues: emotion fearful; ..."
    text = teacher_input(transcript, p_act)      # the teacher's input

`aligncap_core.clues.annotate.add_clues(data_dir)` annotates a prepared manifest;
`aligncap_core.clues.evaluate.parser_agreement(rows)` measures precision/recall.
"""

from aligncap_core.clues.parser import Clue, ClueResult, EmotionClueParser
from aligncap_core.clues.prompt import (
           PromptTemplate,
           build_acoustic_prompt,
           load_templates,
           teacher_input,
)

__all__ = ["Clue", "ClueResult", "EmotionClueParser", "PromptTemplate", "build_acoustic_prompt",
           "load_templates", "teacher_input"]
