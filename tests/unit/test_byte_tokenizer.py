"""The byte tokenizer."""

from __future__ import annotations

from gigatron.data.byte_tokenizer import ByteTokenizer


def test_byte_tokenizer_round_trip_and_ids() -> None:
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.fingerprint) == (259, "bytes-v1")
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    text = "To be, or not to be — ça va? 🙂"
    ids = tok.encode(text)
    assert ids == [b + 3 for b in text.encode("utf-8")]
    assert min(ids) >= 3 and max(ids) < 259
    assert tok.decode([tok.bos_id, *ids, tok.eos_id, tok.pad_id]) == text
    # A truncated multi-byte character decodes to U+FFFD instead of raising.
    assert tok.decode(tok.encode("é")[:1]) == "\ufffd"
