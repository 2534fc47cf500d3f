"""Keeping secrets out of what ref_assets shows and stores (ref.toml output, records, metadata,
error messages).

>>> redact({"api_key": "abc", "url": "https://user:pw@host/x?X-Amz-Signature=f00&a=1"})
{'api_key': '***', 'url': 'https://***@host/x?X-Amz-Signature=***&a=1'}
>>> redact({"credentials": {"user": "u", "password": "p"}})
{'credentials': '***'}
"""

from __future__ import annotations

import re
from typing import Any

# Key names whose values are secrets, whatever their type.
_SECRET_KEY = re.compile(
    r"secret|passw|pwd|token|credential|api[-_]?key|access[-_]?key|private[-_]?key|authorization"
    r"|cookie|signature|^pass$|^key$|^sig$",
    re.IGNORECASE,
)
# Credentials inside URLs: user:password@ (a password may itself hold '@'), and query or
# fragment parameters with secret-looking names (S3 presigned, Azure SAS, OAuth fragments).
_URL_USERINFO = re.compile(r"(?<=://)[^/?#\s]*@")
_SECRET_PARAMETER = re.compile(
    r"([?&#][^=&#\s]*(?:token|secret|key|signature|sig|password|credential)[^=&#\s]*=)[^&#\s]*",
    re.IGNORECASE,
)


def redact(value: Any, key: str = "") -> Any:
    """``value`` with secrets masked: the whole value under a secret-looking key, and
    credentials inside URLs in any string; mappings and lists are walked."""
    if key and _SECRET_KEY.search(key):
        return "***"
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _SECRET_PARAMETER.sub(r"\1***", _URL_USERINFO.sub("***@", value))
    return value
