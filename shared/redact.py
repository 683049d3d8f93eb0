"""What an error may say to a client: no addresses, no absolute paths, no bucket names.

Messages keep their full text in the logs; bodies and job records (readable by any key of
the right scope) get ``public_text``: URLs become ``<address>``, IP addresses and
``host:port`` pairs ``<hidden>`` (``scrub``), an absolute file path keeps only its last
part (``…/clip.pt``), and a ``(bucket 'name')`` aside is dropped. Object keys are relative
(``uploads/a.png``) and stay, so a failure still names the object it is about.
"""

from __future__ import annotations

import re

_URL = re.compile(r"\b[a-z][a-z0-9+.\-]*://[^\s'\"<>]+", re.IGNORECASE)
_IP = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b")
_HOST_PORT = re.compile(r"\b[\w.\-]+:\d{2,5}\b")
# An absolute path with at least one folder: /root/models/clip.pt, '/var/lib/x'. Not an API
# route (/v1/..., /api/...), which a message may name on purpose.
_PATH = re.compile(r"(?<![\w.~:/\-])/(?!v1/|api/)(?:[\w.@+~\-]+/)+([\w.@+~\-]*)")
_BUCKET = re.compile(r"\s*\(bucket '[^']*'\)|\s*\(bucket \"[^\"]*\"\)")


def scrub(text: str) -> str:
    """``text`` without URLs, IP addresses and host:port pairs."""
    for pattern in (_URL, _IP, _HOST_PORT):
        text = pattern.sub("<hidden>", text)
    return text


def public_text(text: str) -> str:
    """``text`` as a client may read it: no URL, absolute path or bucket name."""
    text = _BUCKET.sub("", text)
    text = _URL.sub("<address>", text)
    return _PATH.sub(lambda m: f"…/{m.group(1)}", text)
