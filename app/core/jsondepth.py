"""How deeply JSON text nests, measured on the raw bytes before any parser recurses into it."""

from __future__ import annotations

# Everything but quotes, brackets and newlines (newlines cannot occur inside a JSON string).
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}\n')
_CHUNK = 4 * 1024 * 1024


def nesting_exceeds(data: bytes, limit: int) -> int | None:
    """The 1-based line where arrays/objects first nest deeper than `limit`, or None."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return None  # cannot nest deeper than it has openers: the common case, two C scans
    import numpy as np

    # Drop escaped backslashes, then escaped quotes (pairs left to right, as a JSON string reads
    # them), so that every quote left opens or closes a string. Only C-speed passes: no regex
    # whose cost hostile input could make grow faster than its length.
    text = data.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_STRUCTURE)
    # Between quotes is string content: keep what lies outside (the even pieces).
    skeleton = b"".join(text.split(b'"')[0::2])
    step = np.zeros(256, dtype=np.int64)
    step[list(b"[{")] = 1
    step[list(b"]}")] = -1
    depth, line = 0, 1
    for start in range(0, len(skeleton), _CHUNK):
        chunk = np.frombuffer(skeleton, dtype=np.uint8, count=-1, offset=start)[:_CHUNK]
        running = depth + np.cumsum(step[chunk])
        over = np.flatnonzero(running > limit)
        if over.size:
            return line + int(np.count_nonzero(chunk[: over[0]] == ord("\n")))
        depth = int(running[-1])
        line += int(np.count_nonzero(chunk == ord("\n")))
    return None
