"""Keeping secrets out of what ref_assets shows and stores (ref.toml output, records, metadata).

>>> redact({"api_key": "abc", "url": "https://user:pw@host/x?X-Amz-Signature=f00&a=1"})
{'api_key': '***', 'url': 'https://***@host/x?X-Amz-Signature=***&a=1'}
"""

from __future__ import annotations

import re
from typing import Any

_SECRET_KEY = re.compile(
    r"secret|password|passwd|token|credential|access_key|api_?key|authorization", re.IGNORECASE
)
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_SECRET_QUERY = re.compile(
    r"([?&][^=&#\s]*(?:token|secret|key|signature|password|credential)[^=&#\s]*=)[^&#\s]*",
    re.IGNORECASE,
)


def redact(value: Any, key: str = "") -> Any:
    """``value`` with secrets masked: whole values under secret-looking keys, and credentials
    inside URLs; mappings and lists are walked."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, key) for v in value]
    if key and _SECRET_KEY.search(key):
        return "***"
    if isinstance(value, str):
        return _SECRET_QUERY.sub(r"\1***", _URL_USERINFO.sub("***@", value))
    return value
