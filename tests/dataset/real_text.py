"""Text cells of the shared real datasets, for checking the formula filter against real writing."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import shared_data


def _column(path: Path, index: int, *, delimiter: str = ",", header: bool = True) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        rows = list(csv.reader(f, delimiter=delimiter, quoting=quoting))
    return [row[index] for row in rows[1 if header else 0 :]]


def _conll(path: Path, sep: str | None) -> list[list[str]]:
    """Sentences as token lists; `-DOCSTART-` lines and blank lines end a sentence."""
    sentences: list[list[str]] = [[]]
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("-DOCSTART-"):
            if sentences[-1]:
                sentences.append([])
            continue
        sentences[-1].append(line.split(sep)[0])
    return [s for s in sentences if s]


def _squad(path: Path) -> Iterator[str]:
    for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
        for paragraph in article["paragraphs"]:
            yield paragraph["context"]
            for qa in paragraph["qas"]:
                yield qa["question"]
                yield from (answer["text"] for answer in qa["answers"])


def _tokens_and_sentences(paths: list[Path], sep: str | None) -> list[str]:
    sentences = [s for path in paths for s in _conll(path, sep)]
    return [" ".join(s) for s in sentences] + [token for s in sentences for token in s]


def corpora() -> dict[str, list[str]]:
    """Name -> text cells: what a user would put in a CSV's text columns (tokens count as cells).

    Skips the calling test when a file is absent."""
    conll = [shared_data("conll2003", n) for n in ("eng.train", "eng.testa", "eng.testb")]
    wnut = [
        shared_data("wnut17", n)
        for n in ("wnut17train.conll", "emerging.dev.conll", "emerging.test.annotated")
    ]
    tweets = ("train_text.txt", "val_text.txt", "test_text.txt")
    return {
        "sst2": [
            t
            for n in ("train.tsv", "dev.tsv")
            for t in _column(shared_data("sst2", n), 0, delimiter="\t")
        ],
        "banking77": [
            t for n in ("train.csv", "test.csv") for t in _column(shared_data("banking77", n), 0)
        ],
        "conll2003": _tokens_and_sentences(conll, None),
        "wnut17": _tokens_and_sentences(wnut, "\t"),
        "squad": list(_squad(shared_data("squad_v1.1", "dev-v1.1.json"))),
        "tweeteval": [
            line
            for n in tweets
            for line in shared_data("tweeteval_emotion", n).read_text(encoding="utf-8").splitlines()
        ],
        "ag_news": [
            t for i in (1, 2) for t in _column(shared_data("ag_news", "test.csv"), i, header=False)
        ],
        # The TREC train file is not valid UTF-8 (one byte); latin-1 reads every byte.
        "trec": [
            line.split(" ", 1)[1]
            for n in ("train_5500.label", "TREC_10.label")
            for line in shared_data("trec", n).read_text(encoding="latin-1").splitlines()
        ],
    }
