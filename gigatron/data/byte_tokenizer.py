"""A tokenizer-free baseline: every UTF-8 byte is a token.

It needs no training and no files, so the default pipeline works offline once the corpus is
cached. Other tokenizers (sentencepiece, issue 3) expose the same attributes so the rest of the
pipeline never checks which one it has.
"""

from __future__ import annotations

from collections.abc import Iterable

# Specials come first so byte values are a fixed offset away and ids never collide.
PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
_BYTE_OFFSET = 3


class ByteTokenizer:
    """Maps text to UTF-8 bytes shifted by 3: 0 pad, 1 bos, 2 eos, byte b -> b + 3."""

    vocab_size: int = 256 + _BYTE_OFFSET
    # Part of the token-cache key: bump it if the id mapping ever changes.
    fingerprint: str = "bytes-v1"
    pad_id: int = PAD_ID
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID

    def encode(self, text: str) -> list[int]:
        """Return the ids of `text`'s UTF-8 bytes, without bos/eos."""
        return [b + _BYTE_OFFSET for b in text.encode("utf-8")]

    def decode(self, ids: Iterable[int]) -> str:
        """Turn ids back into text, dropping specials; invalid UTF-8 becomes U+FFFD."""
        data = bytes(int(i) - _BYTE_OFFSET for i in ids if _BYTE_OFFSET <= int(i) < self.vocab_size)
        return data.decode("utf-8", errors="replace")
