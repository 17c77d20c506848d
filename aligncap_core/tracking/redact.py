"""Parameter flattening and secret redaction for everything aligncap sends to MLflow.

Params and config artifacts are visible to anyone with access to the tracking server, so a
secret must never reach them. Two independent guards, both failing closed:

- key names: a key whose name mentions key/secret/token/password/credential/auth (any case,
  anywhere in the dotted path) has its value replaced by `REDACTED`. Count-like names
  (`max_new_tokens`, `tokenizer`) are the only exceptions, because they are common
  hyper-parameters and never hold a secret.
- values: strings that look like credentials (provider key prefixes such as `sk-`, `AKIA`,
  `hf_`, `ghp_`; private-key blocks; JWTs; passwords inside URLs; long random-looking tokens) are
  replaced wherever they occur, whatever the key is called.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH

REDACTED = "[redacted]"

_SECRET_KEY_RE = re.compile(r"key|secret|token|passw(or)?d|credential|auth", re.IGNORECASE)
# Words that contain a secret-ish substring but name ordinary hyper-parameters. They are removed
# before the check, so `max_new_tokens` passes while `hf_token` or `tokens_api_key` do not.
_SAFE_WORDS_RE = re.compile(r"tokens|tokeni[sz](er|ed|e|ation)s?|author(s)?\b", re.IGNORECASE)

_SECRET_VALUE_RES = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.S),
    re.compile(r"\b(sk|pk|rk)-[A-Za-z0-9_\-]{16,}"),           # OpenAI / Stripe style
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),                 # AWS access key ids
    re.compile(r"\bhf_[A-Za-z0-9]{20,}"),                       # Hugging Face
    re.compile(r"\b(ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{20,}|\bgithub_pat_[A-Za-z0-9_]{20,}"),
    re.compile(r"\bxox[abprs]-[A-Za-z0-9\-]{10,}"),              # Slack
    re.compile(r"\bAIza[0-9A-Za-z_\-]{30,}"),                    # Google API keys
    re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*"),  # JWTs
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._\-+/=]{8,}"),
]
_URL_PASSWORD_RE = re.compile(r"(://[^:/@\s]+):([^@/\s]+)@")
# Long runs of base64/url-safe characters: candidates for a random secret (e.g. the 40-character
# AWS secret access key). `_looks_random` decides; hex digests and paths are left alone.
_TOKEN_RE = re.compile(r"[A-Za-z0-9+/=_\-]{30,}")


def is_secret_key(key: str) -> bool:
    """True when a (possibly dotted) key name suggests its value is a credential."""
    return bool(_SECRET_KEY_RE.search(_SAFE_WORDS_RE.sub("", key)))


def _looks_random(tok: str) -> bool:
    """Random secrets switch between lower/upper/digit far more often than names or paths do."""
    if re.fullmatch(r"[0-9a-fA-F\-]+", tok):        # digests, fingerprints, UUIDs: not secrets
        return False
    classes = ["l" if c.islower() else "u" if c.isupper() else "d" if c.isdigit() else ""
               for c in tok]
    if len({c for c in classes if c}) < 3:
        return False
    switches = sum(1 for a, b in zip(classes, classes[1:], strict=False) if a and b and a != b)
    return switches / len(tok) >= 0.3


def redact_value(value: str) -> str:
    """`value` with every credential-looking substring replaced by `REDACTED`."""
    out = _URL_PASSWORD_RE.sub(rf"\1:{REDACTED}@", value)
    for rx in _SECRET_VALUE_RES:
        out = rx.sub(REDACTED, out)
    return _TOKEN_RE.sub(lambda m: REDACTED if _looks_random(m.group(0)) else m.group(0), out)


def redact_config(config: Any, _path: str = "") -> Any:
    """A deep copy of a config (dicts, lists, scalars) with secret keys and values redacted."""
    if isinstance(config, Mapping):
        out = {}
        for k, v in config.items():
            path = f"{_path}.{k}" if _path else str(k)
            out[k] = REDACTED if is_secret_key(path) and v not in (None, "") else redact_config(v, path)
        return out
    if isinstance(config, (list, tuple)):
        return [redact_config(v, _path) for v in config]
    if isinstance(config, str):
        return redact_value(config)
    return config


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a nested config into MLflow params: `{"train": {"lr": 1e-4}}` -> `{"train.lr": "0.0001"}`.

    Values become strings (lists as their repr) truncated to MLflow's 6000-character limit,
    keys to 250 characters; secret keys and secret-looking values are redacted (module doc).
    """
    out: dict[str, str] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten_params(v, f"{key}."))
            continue
        if is_secret_key(key) and v not in (None, ""):
            text = REDACTED
        else:
            text = redact_value(str(redact_config(v, key)))
        out[_truncate(key, MAX_ENTITY_KEY_LENGTH)] = _truncate(text, MAX_PARAM_VAL_LENGTH)
    return out
