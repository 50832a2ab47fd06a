"""CSV injection: formulas behind Unicode spaces, full-width signs or Excel syntax are refused; text
that only looks like one (rules, arrows, emoticons, bullets, phone numbers) is kept as it is."""

from __future__ import annotations

import csv
import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.dataset.formulas import formula_rows
from tests.dataset.util import created, dataset_dir, error, leftovers, upload

HIDDEN = {
    "no-break space": "\u00a0",
    "vertical tab": "\v",
    "en quad": "\u2000",
    "em space": "\u2003",
    "hair space": "\u200a",
    "zero-width space": "\u200b",
    "ideographic space": "\u3000",
    "byte-order mark": "\ufeff",
    "right-to-left mark": "\u200f",
    "narrow no-break space": "\u202f",
}

BYPASSES = [
    "=@SUM(A1)",
    "={1,2}",
    "=[evil.xlsx]Sheet1!A1",
    "=!A1",
    "=ÄNDERN(1)",
    '==HYPERLINK("http://evil.example")',
    "= [evil.xlsx]Sheet1!A1",
    "+[evil.xlsx]Sheet1!A1",
    "-Sheet1!A1",
    "@'Sheet 1'!B2",
    "+(SUM(A1))",
    "+1<SUM(A1)",
    *(f"{c}=1+1" for c in HIDDEN.values()),
    "\u00a0\u200b\t=cmd",
    "\u00a0+SUM(A1)",
    "\v@SUM(1,2)",
    "\u3000-2+3+cmd|' /C calc'!A0",
    "\uff1d1+1",  # full-width equals
    "\uff1dＳＵＭ（Ａ１）",  # all full-width
    "\ufe66A1",  # small equals
    "\u207c1+1",  # superscript equals
    "\uff0bSUM(A1)",  # full-width plus
    "\uff0d2+3+cmd|' /C calc'!A0",  # full-width minus
    "\ufe63SUM(A1)",  # small minus
    "\uff20SUM(1,2)",  # full-width at
    "\u3000\uff1d1+1",
]

# Refused before as well, and still now that "= great" passes; the OWASP list's tab and CR in front.
KEPT = [
    "='[evil.xlsx]Sheet 1'!A1",
    "= SUM(A1)",
    '= 1+HYPERLINK("http://evil.example")',
    '= "click"&HYPERLINK("http://evil.example")',
    '= "great"',
    "= 'great'",
    "= cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
    "\f=1+1",
]

LOOKALIKES = [
    "= great",
    "= 5 stars",
    "= a very good film",
    "=====",
    "==",
    "=",
    "==> see below",
    "=== Headline ===",
    "=== Apple results (1996) ===",
    "=)",
    "=/",
    "=[",
    "=\\",
    "- great film",
    "- great film (2002)",
    "-- London Newsroom +44 171 542 7658",
    "-5 stars",
    "-_-",
    "- [x] done!",
    "+1",
    "+44 20 7542 7658",
    "+ (yes)",
    "\tgreat film",
    "\r\ngreat film",
    "@user thanks",
    "@user @user what?! no!",
    "@ home",
    "a = b",
    "'=1+1",
    "\u00a0great film",
    "\u3000- great film",
    "\uff1d\uff1d\uff1d",
    "\uff0b1",
    "😀 =1+1",
    "😀",
    "👍🏽 =)",
    "\u200b@user thanks",
]


def csv_bytes(rows: list[tuple[str, str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL).writerows(
        [("text", "label"), *rows]
    )
    return out.getvalue().encode()


@pytest.mark.parametrize("cell", BYPASSES + KEPT, ids=ascii)
def test_formula_bypasses_are_refused(client, settings, cell):  # type: ignore[no-untyped-def]
    err = error(upload(client, csv_bytes([("good film", "pos"), (cell, "neg")])), 422)
    assert err["code"] == "formula_cell"
    assert err["message"].startswith("line 3, column 1 ('text'): the cell ")
    assert err["details"] == {"line": 3, "column": 1, "field": "text"}
    assert leftovers(settings) == []


@pytest.mark.parametrize("name", ["no-break space", "vertical tab", "ideographic space"])
def test_hidden_formulas_in_tsv_are_refused(client, settings, name):  # type: ignore[no-untyped-def]
    content = f"text\tlabel\ngood film\tpos\nbad film\t{HIDDEN[name]}=1+1\n".encode()
    err = error(upload(client, content, "a.tsv"), 422)
    assert err["details"] == {"line": 3, "column": 2, "field": "label"}


@pytest.mark.parametrize("text", LOOKALIKES, ids=ascii)
def test_plain_text_lookalikes_are_not_formulas(text: str) -> None:
    assert formula_rows(pa.array(["ok", text])).to_pylist() == []


def test_plain_text_lookalikes_upload_unchanged(client, settings):  # type: ignore[no-untyped-def]
    rows = [(text, "pos" if i % 2 else "neg") for i, text in enumerate(LOOKALIKES)]
    body = created(upload(client, csv_bytes(rows)))
    table = pq.read_table(dataset_dir(settings, body["id"]) / "data.parquet")
    assert table["text"].to_pylist() == LOOKALIKES


def test_the_first_formula_of_any_column_is_named(client):  # type: ignore[no-untyped-def]
    rows = [("ok", "pos"), ("fine", "\u00a0=1+1"), ("\uff1d1+1", "neg")]
    err = error(upload(client, csv_bytes(rows)), 422)
    assert err["details"] == {"line": 3, "column": 2, "field": "label"}
    assert "'\\xa0=1+1'" in err["message"]


def test_formula_rows_are_positions_in_order() -> None:
    column = pa.chunked_array([["ok", "\uff1d1"], [None, "+x", "@SUM(1)"], []])
    assert formula_rows(column).to_pylist() == [1, 4]
