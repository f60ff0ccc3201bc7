"""An in-memory CLIP tokenizer (no hub access, no files) for tiny random-weight models.

The benchmark test kits (``benchmarks/<name>/testing.py``) build tiny CLIP scorers with it, and
the trainer's tiny SD3 pipelines (``trainers.awm.tiny``) their CLIP text encoders; it lives at the
lowest layer so both can use it (docs: stack-notes section 2).
"""

from __future__ import annotations

from transformers import CLIPTokenizer


def bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 / CLIP byte -> printable unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def make_clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """Character-level byte BPE with CLIP's special tokens (514 ids, no UNK possible)."""
    byte_chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(byte_chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(byte_chars)})
    vocab["<|startoftext|>"] = 512
    vocab["<|endoftext|>"] = 513
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)
