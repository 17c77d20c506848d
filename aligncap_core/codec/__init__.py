"""Speech tokens: EnCodec RVQ codes (pretrained or calibrated offline) and their LLM token layout."""

from aligncap_core.codec.calibrate import calibrate_encodec, kmeans
from aligncap_core.codec.dataset import load_codes, tokenize_dataset
from aligncap_core.codec.layout import (
    AUDIO_END,
    AUDIO_START,
    audio_token_vocab,
    codes_to_tokens,
    tokens_to_codes,
)
from aligncap_core.codec.probe import code_features, probe_dataset
from aligncap_core.codec.tokenizer import EncodecTokenizer, SpeechTokenizer, read_audio

__all__ = [
    "AUDIO_END",
    "AUDIO_START",
    "EncodecTokenizer",
    "SpeechTokenizer",
    "audio_token_vocab",
    "calibrate_encodec",
    "code_features",
    "codes_to_tokens",
    "kmeans",
    "load_codes",
    "probe_dataset",
    "read_audio",
    "tokenize_dataset",
    "tokens_to_codes",
]
