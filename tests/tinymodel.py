"""A tiny BERT built offline for tests: 2 layers (or as asked), hidden 32, a WordPiece vocab."""

from __future__ import annotations

import random
from pathlib import Path

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POSITIVE = ["good", "great", "nice", "lovely", "superb", "fun", "warm", "bright"]
NEGATIVE = ["bad", "awful", "poor", "ugly", "terrible", "boring", "dull", "cold"]
NEUTRAL = ["the", "a", "movie", "film", "was", "is", "very", "and", "plot", "story", "it"]
# Single letters and ## pieces keep any other word tokenizable.
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
VOCAB = SPECIAL_TOKENS + POSITIVE + NEGATIVE + NEUTRAL + LETTERS + [f"##{c}" for c in LETTERS]


def build_tiny_model_dir(path: Path, *, layers: int = 2) -> Path:
    """Write a randomly initialised (seeded) tiny BertModel + fast tokenizer to `path`."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab_file = path / "vocab.txt"
    vocab_file.write_text("\n".join(VOCAB) + "\n")
    # transformers 5 takes the WordPiece vocab as `vocab` (older versions: `vocab_file`).
    vocab = {token: i for i, token in enumerate(VOCAB)}
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    tokenizer.model_max_length = 64
    tokenizer.save_pretrained(str(path))
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        type_vocab_size=2,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(path))
    return path


def sentiment_rows(n: int, *, seed: int = 0) -> dict[str, list[str]]:
    """`n` short texts labelled "pos"/"neg" by which word list they draw from (balanced)."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = POSITIVE if label == "pos" else NEGATIVE
        picked = [rng.choice(words) for _ in range(rng.randint(1, 3))]
        picked += [rng.choice(NEUTRAL) for _ in range(rng.randint(1, 6))]
        rng.shuffle(picked)
        texts.append(" ".join(picked))
        labels.append(label)
    return {"text": texts, "label": labels}
