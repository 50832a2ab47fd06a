"""Hostile and odd /predict inputs against real tiny models of every task and artifact kind (full,
LoRA adapter, merged LoRA, int8, ONNX fp32 and int8 under ONNX Runtime): each gets a 422 that
names the input at fault (`inputs[3].text`) or a defined answer, never a 500. Examples first, then
hypothesis over any Unicode text, lone UTF-16 surrogates included."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import RecordingQueue, auth, create_api_key
from tests.tinyserved import KINDS, served_copy

# Generated requests per task (HOSTILE_EXAMPLES); each is a real model call or a 422.
EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "150"))
SURROGATE = "\ud800"
TEMPLATES = Path(__file__).resolve().parents[2] / "app" / "ui" / "templates"


@dataclass
class Served:
    client: TestClient
    models: dict[str, dict[str, str]]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from app.main import create_app

    conf, models = served_copy(tmp_path_factory, "hostile")
    application = create_app(conf, queue=RecordingQueue())
    # raise_server_exceptions=False: a 500 shows as the 500 a client would get.
    with TestClient(
        application, headers=auth(create_api_key(conf)), raise_server_exceptions=False
    ) as client:
        yield Served(client, models)
    application.state.engine.dispose()


def post(served: Served, task: str, body: dict[str, Any], kind: str = "full") -> Any:
    """POST a body whose strings may hold lone surrogates (json.dumps escapes them: `\\ud800`)."""
    body = {"model": served.models[task][kind], **body}
    return served.client.post(
        f"/v1/predict/{task}",
        content=json.dumps(body),
        headers={"Content-Type": "application/json"},
    )


def fields(resp: Any) -> list[str]:
    """The fields a 422 names."""
    assert resp.status_code == 422, resp.text
    details = resp.json()["error"]["details"]
    return [e["field"] for e in details.get("errors", [])] or [details["field"]]


def predictions(resp: Any) -> list[Any]:
    assert resp.status_code == 200, resp.text
    found: list[Any] = resp.json()["predictions"]
    return found


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize(
    ("task", "body", "field"),
    [
        # Was a 500 (a TextPair validation error inside the task's predict).
        ("classification", {"inputs": ["ok", ""]}, "inputs[1]"),
        # Texts the model would see nothing of: training refuses such rows, and so does /predict.
        ("classification", {"inputs": ["ok", " \t\n"]}, "inputs[1]"),
        ("classification", {"inputs": ["\u200b\u200e\x00"]}, "inputs[0]"),
        ("classification", {"inputs": [{"text": "ok"}, {"text": "\u3000"}]}, "inputs[1].text"),
        ("qa", {"inputs": [{"question": "\u200b", "context": "ok"}]}, "inputs[0].question"),
        ("qa", {"inputs": [{"question": "ok", "context": " \x7f"}]}, "inputs[0].context"),
        # Lone surrogates: were TypeErrors from the tokenizer (500s).
        ("classification", {"inputs": ["ok", SURROGATE]}, "inputs[1]"),
        (
            "classification",
            {"inputs": [{"text": "a", "text_pair": "b\udfff"}]},
            "inputs[0].text_pair",
        ),
        ("classification", {"inputs": [{"text": f"a{SURROGATE}"}]}, "inputs[0].text"),
        ("ner", {"inputs": ["Paris", f"Peter {SURROGATE} Paris"]}, "inputs[1]"),
        ("ner", {"inputs": [{"tokens": ["Peter", SURROGATE]}]}, "inputs[0].tokens[1]"),
        ("qa", {"inputs": [{"question": SURROGATE, "context": "ok"}]}, "inputs[0].question"),
        ("qa", {"inputs": [{"question": "ok", "context": f"x{SURROGATE}"}]}, "inputs[0].context"),
        # The 422 quotes the value: was a 500 writing the surrogate into the UTF-8 response.
        ("qa", {"inputs": [SURROGATE]}, "inputs[0]"),
        ("ner", {"inputs": [{"tokens": SURROGATE}]}, "inputs[0].tokens"),
    ],
)
def test_refused_inputs_name_the_input(
    served: Served, task: str, body: dict[str, Any], field: str, kind: str
) -> None:
    resp = post(served, task, body, kind)
    assert fields(resp) == [field], resp.text
    message = resp.json()["error"]["message"]
    assert message.startswith(f"{field}: "), message
    if SURROGATE in json.dumps(body, ensure_ascii=False) or "\udfff" in json.dumps(body):
        assert "surrogate" in message or "expected" in message, message


@pytest.mark.parametrize("task", ["classification", "ner", "qa"])
def test_a_lone_surrogate_in_the_model_field_is_422(served: Served, task: str) -> None:
    item: Any = {"question": "q", "context": "c"} if task == "qa" else "x"
    body = {"model": f"mdl_{SURROGATE}", "inputs": [item]}
    resp = served.client.post(
        f"/v1/predict/{task}",
        content=json.dumps(body),
        headers={"Content-Type": "application/json"},
    )
    assert fields(resp) == ["model"]
    assert "surrogate (\\ud800) at character 4" in resp.json()["error"]["message"]


def test_messages_quote_a_surrogate_as_its_escape(served: Served) -> None:
    # The body check (app/core/surrogates.py) names the surrogate before the schema sees the shape.
    resp = post(served, "qa", {"inputs": [f"why{SURROGATE}"]})
    assert resp.json()["error"]["message"].startswith(
        "inputs[0]: has a lone UTF-16 surrogate (\\ud800) at character 3"
    )
    # Pydantic's own refusal of a surrogate ("unable to parse raw data as a unicode string").
    resp = post(served, "classification", {"inputs": ["ok"], "top_k": f"1{SURROGATE}"})
    assert resp.json()["error"]["message"].startswith(
        "top_k: has a lone UTF-16 surrogate (\\ud800) at character 1"
    )


def test_a_surrogate_sent_as_raw_bytes_is_refused_like_an_escaped_one(served: Served) -> None:
    # CESU-8 bytes of U+D800: Python's json reads them as the same lone surrogate.
    model = served.models["classification"]["full"].encode()
    body = b'{"model": "' + model + b'", "inputs": ["ok", "\xed\xa0\x80"]}'
    resp = served.client.post(
        "/v1/predict/classification", content=body, headers={"Content-Type": "application/json"}
    )
    assert fields(resp) == ["inputs[1]"]


@pytest.mark.parametrize("kind", list(KINDS))
def test_odd_but_valid_inputs_have_defined_answers(served: Served, kind: str) -> None:
    # NER raw text with no word in it (empty, spaces, punctuation, invisible characters): no
    # entities. A token the tokenizer turns into nothing: tag O without a score.
    odd = ["", "   ", ". , ! ?", "\u200b\u200b", "\x00", "\u0301", "\u202eParis\u202c"]
    assert all(isinstance(r, list) for r in predictions(post(served, "ner", {"inputs": odd}, kind)))
    assert predictions(post(served, "ner", {"inputs": odd[:5]}, kind)) == [[]] * 5
    tagged = predictions(post(served, "ner", {"inputs": [{"tokens": ["\u200b", "Paris"]}]}, kind))
    assert tagged[0][0] == {"token": "\u200b", "tag": "O", "score": None}
    # Text that is visible but tokenizes to nothing (a lone combining mark, which the tiny BERT
    # strips): classification answers as for an empty text, QA finds no answer in such a context.
    scores = predictions(
        post(served, "classification", {"inputs": ["\u0301"], "top_k": None}, kind)
    )
    assert sum(s["score"] for s in scores[0]) == pytest.approx(1.0, abs=1e-5)
    answers = predictions(
        post(served, "qa", {"inputs": [{"question": "which", "context": "\u0301"}]}, kind)
    )
    assert answers == [[{"answer": "", "score": 0.0, "start": 0, "end": 0}]]
    # Unicode oddities tokenize like any text.
    texts = [
        "😀 great film",
        "\u05e9\u05dc\u05d5\u05dd film",
        "e\u0301te\u0301",
        "\ufffd bad",
        "a" * 5000,
    ]
    assert len(predictions(post(served, "classification", {"inputs": texts}, kind))) == len(texts)
    for text, entities in zip(
        texts, predictions(post(served, "ner", {"inputs": texts}, kind)), strict=True
    ):
        assert all(text[e["start"] : e["end"]] == e["text"] for e in entities)
    qa = [{"question": t, "context": t} for t in texts]
    for item, answers in zip(
        qa, predictions(post(served, "qa", {"inputs": qa}, kind)), strict=True
    ):
        assert all(item["context"][a["start"] : a["end"]] == a["answer"] for a in answers)


def test_limits_and_top_k_edges(served: Served) -> None:
    assert len(predictions(post(served, "classification", {"inputs": ["ok"] * 256}))) == 256
    assert fields(post(served, "classification", {"inputs": ["ok"] * 257})) == ["inputs"]
    assert len(predictions(post(served, "ner", {"inputs": ["a" * 20_000]}))) == 1
    assert fields(post(served, "ner", {"inputs": ["ok", "a" * 20_001]})) == ["inputs[1]"]
    assert fields(post(served, "classification", {"inputs": []})) == ["inputs"]
    # top_k: null or more than there are labels gives every label, best first.
    for top_k in (None, 2, 10**9):
        scores = predictions(post(served, "classification", {"inputs": ["ok"], "top_k": top_k}))
        assert [len(s) for s in scores] == [2]
    assert fields(post(served, "classification", {"inputs": ["ok"], "top_k": 0})) == ["top_k"]
    qa = {"inputs": [{"question": "which is good", "context": "a good film"}]}
    assert 1 <= len(predictions(post(served, "qa", qa | {"top_k": 100}))[0]) <= 100
    assert fields(post(served, "qa", qa | {"top_k": 101})) == ["top_k"]


# --- hypothesis ------------------------------------------------------------------------------

# Any code point: letters, marks, numbers, punctuation, symbols, separators, and the "other"
# categories: controls (NUL...), format (zero-width, bidi), private use, unassigned, and lone
# surrogates (Cs), which JSON can carry as \ud800 escapes.
ANY_CHARACTER = st.characters(codec=None, categories=["L", "M", "N", "P", "S", "Z", "C", "Cs"])
# Drawn uniformly, a surrogate or an invisible character would be rare; these make them common.
CHARACTERS = st.one_of(
    ANY_CHARACTER,
    st.characters(codec=None, categories=["Cs"]),
    st.characters(codec=None, categories=["Cc", "Cf", "Zs", "Zl", "Zp", "Mn", "Co", "Cn"]),
)
TEXT = st.one_of(
    st.text(CHARACTERS, max_size=40),
    st.text(st.sampled_from(" \t\n\u200b\u00a0.,!?"), max_size=8),  # nothing to read
    st.builds(lambda w, n: w * n, st.text(CHARACTERS, min_size=1, max_size=3), st.integers(1, 400)),
)
BODIES = {
    "classification": st.fixed_dictionaries(
        {
            "inputs": st.lists(
                st.one_of(
                    TEXT,
                    st.fixed_dictionaries({"text": TEXT}, optional={"text_pair": st.none() | TEXT}),
                ),
                min_size=1,
                max_size=6,
            )
        },
        optional={"top_k": st.none() | st.integers(1, 3) | st.just(2**40)},
    ),
    "ner": st.fixed_dictionaries(
        {
            "inputs": st.lists(
                st.one_of(
                    TEXT, st.fixed_dictionaries({"tokens": st.lists(TEXT, min_size=1, max_size=8)})
                ),
                min_size=1,
                max_size=6,
            )
        }
    ),
    "qa": st.fixed_dictionaries(
        {
            "inputs": st.lists(
                st.fixed_dictionaries({"question": TEXT, "context": TEXT}), min_size=1, max_size=4
            )
        },
        optional={"top_k": st.integers(1, 100)},
    ),
}


def check_answer(task: str, body: dict[str, Any], resp: Any) -> None:
    """No 5xx; a 422 names only fields inside `inputs[...]`; a 200 has one answer per input,
    whose offsets slice the input exactly."""
    assert resp.status_code < 500, resp.text
    if resp.status_code != 200:
        assert all(f.startswith("inputs[") for f in fields(resp)), resp.text
        return
    found = predictions(resp)
    assert len(found) == len(body["inputs"])
    for item, answer in zip(body["inputs"], found, strict=True):
        if task == "ner" and isinstance(item, str):
            assert all(item[e["start"] : e["end"]] == e["text"] for e in answer)
        elif task == "ner":
            assert [t["token"] for t in answer] == item["tokens"]
        elif task == "qa":
            assert all(item["context"][a["start"] : a["end"]] == a["answer"] for a in answer)


@pytest.mark.parametrize("task", ["classification", "ner", "qa"])
def test_any_text_gets_an_answer_or_a_422_naming_the_input(
    served: Served, task: str, capsys: pytest.CaptureFixture[str]
) -> None:
    statuses: dict[int, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(body=BODIES[task], kind=st.sampled_from(list(KINDS)))
    def run(body: dict[str, Any], kind: str) -> None:
        resp = post(served, task, body, kind)
        statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
        check_answer(task, body, resp)

    run()
    with capsys.disabled():
        cases = sum(statuses.values())
        print(
            f"\nhostile inputs [{task}]: {cases} cases; statuses {dict(sorted(statuses.items()))}"
        )
    # Both outcomes were exercised: real model calls and refusals.
    assert statuses.get(200, 0) > 0 and statuses.get(422, 0) > 0, statuses


# Text a browser can send in a form: any code point but the lone surrogates UTF-8 cannot carry.
MARKUP = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>']
FORM_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200) | st.sampled_from(
    [*MARKUP, "&amp; &lt;", " ", ""]
)
DASHBOARD_EXAMPLES = max(10, EXAMPLES // 15)


@pytest.mark.parametrize("task", ["classification", "ner", "qa"])
def test_the_dashboards_try_box_answers_any_text_escaped(served: Served, task: str) -> None:
    """The try box sends what /predict gets: any text is an answer or a refusal page, never a
    500, and nothing the user typed comes back unescaped."""
    from app.ml.tasks import get_task
    from tests.ui.conftest import csrf_of, sign_in

    key = served.client.headers["Authorization"].removeprefix("Bearer ")
    with TestClient(served.client.app, raise_server_exceptions=False) as browser:
        token = sign_in(browser, key)
        model = served.models[task]["full"]
        names = get_task(task).input_fields
        statuses: dict[int, int] = {}
        own_markup = "".join(f.read_text() for f in TEMPLATES.glob("*.html"))

        @settings(
            max_examples=DASHBOARD_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(values=st.fixed_dictionaries({name: FORM_TEXT for name in names}))
        def run(values: dict[str, str]) -> None:
            resp = browser.post(f"/ui/models/{model}/predict", data={"csrf_token": token, **values})
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
            assert resp.status_code < 500, resp.text[:500]
            assert csrf_of(resp.text) == token
            for value in values.values():
                # Markup typed in comes back as text. A text the pages' own markup holds ("<",
                # "<di") is found in any page, escaped or not: only the others are telling.
                if "<" in value and (value in MARKUP or value not in own_markup):
                    assert value not in resp.text, value
            if resp.status_code == 200:
                assert 'id="answer"' in resp.text

        run()
    assert statuses.get(200, 0) > 0, statuses
