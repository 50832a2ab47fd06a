"""The baseline arm of serve_throughput.py: a fine-tuned classifier served as the tutorials do.

A transformers `pipeline("text-classification")` built at import, a FastAPI app, and a plain `def`
route that calls the pipeline once per request (FastAPI runs it in its thread pool). Started the
usual way, by uvicorn, with the model directory in MODEL_DIR:

    MODEL_DIR=path/to/model uvicorn serve_throughput_tutorial:app --port 8000

The benchmark sets the torch thread count through the environment (OMP_NUM_THREADS), as
`tuneserve up` does for its API; nothing in this file sets it. Nothing here imports the service.
"""

import os

from fastapi import FastAPI
from pydantic import BaseModel
from transformers import pipeline

classifier = pipeline("text-classification", model=os.environ["MODEL_DIR"])

app = FastAPI()


class Item(BaseModel):
    text: str


@app.post("/predict")
def predict(item: Item) -> dict[str, object]:
    """The top label and its score."""
    result: dict[str, object] = classifier(item.text)[0]
    return result
