"""Hostile uploads: what each costs the API process that also serves /predict.

Builds small files that are expensive to parse (a 160 KB Parquet whose one dictionary value
expands to 1.5 GB, a 2 MB CSV of a million columns, JSON Lines and JSON objects of 100,000 keys, a
Parquet file of 5,000 columns, a compressed Parquet file and a CSV that decode to far more than
their size) and uploads each to the real service: `tuneserve up` on a temporary data directory, or
a running one given with --url and --key. For each file it prints the answer (status and error
code), the seconds it took and the API process's peak resident memory growth while it was handled:
its VmRSS (from /proc/<pid>/status) sampled every few milliseconds in a thread, and its VmHWM after
resetting it (/proc/<pid>/clear_refs) where the kernel allows, the larger of the two.

    python benchmarks/hostile_uploads.py                  # starts `tuneserve up` (about a minute)
    python benchmarks/hostile_uploads.py --quick          # smaller files where size is the point
    python benchmarks/hostile_uploads.py --url http://127.0.0.1:8000 --key tsk_... [--pid N]

The API's pid is found from its command line (`app.cli api ... --port P`) when the service is
local; --pid names it otherwise (without it, no memory figures). Ends with one line of JSON. Exits
non-zero when an upload got a 5xx or no answer. Nothing is written to the repository.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MB = 1024 * 1024


# The files.


def dictionary_bomb(rows: int = 1_500_000, chars: int = 1000) -> bytes:
    """`rows` rows of one `chars`-character text (and a two-value label), dictionary-encoded."""
    import pyarrow as pa

    text = pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), ["x" * chars])
    label = pa.DictionaryArray.from_arrays(
        pa.array([i % 2 for i in range(rows)], pa.int32()), ["neg", "pos"]
    )
    return _parquet(pa.table({"text": text, "label": label}), compression="zstd")


def compressed_parquet(rows: int, chars: int) -> bytes:
    """Distinct, highly compressible texts without dictionary encoding: decoded >> file."""
    import pyarrow as pa

    texts = [f"{i:08d}" + "y" * (chars - 8) for i in range(rows)]
    labels = ["neg", "pos"] * (rows // 2) + ["neg"] * (rows % 2)
    table = pa.table({"text": texts, "label": labels})
    return _parquet(table, compression="zstd", use_dictionary=False)


def wide_parquet(columns: int = 5000) -> bytes:
    import pyarrow as pa

    return _parquet(pa.table({f"c{i}": ["a"] for i in range(columns)}))


def wide_csv(columns: int = 1_000_000, lines: int = 2) -> bytes:
    """Lines of `columns` empty fields: `columns - 1` commas each (1 MB a line for a million)."""
    return (b"," * (columns - 1) + b"\n") * lines


def wide_jsonl(keys: int = 100_000) -> bytes:
    row = json.dumps({str(i): 0 for i in range(keys)}, separators=(",", ":"))
    return (row + "\n").encode()


def wide_json(keys: int = 100_000) -> bytes:
    return json.dumps([{str(i): 0 for i in range(keys)}], separators=(",", ":")).encode()


def many_rows_csv(rows: int) -> bytes:
    """Short distinct cells: each ~10-byte line becomes several Python and Arrow objects."""
    out = io.BytesIO()
    out.write(b"text,label\n")
    for i in range(rows):
        out.write(b"t%d,%s\n" % (i, b"pos" if i % 2 else b"neg"))
    return out.getvalue()


def lying_footer(rows: int = 2_500_000) -> bytes:
    """`rows` rows whose footer was edited in place to say 10 (the file's and the row group's
    counts), as a damaged or doctored file would."""
    import pyarrow as pa

    sys.path.insert(0, str(REPO))
    from tests.dataset.parquet_footer import FILE_NUM_ROWS, GROUP_NUM_ROWS, patched

    table = pa.table(
        {"text": [f"review {i}" for i in range(rows)], "label": ["pos", "neg"] * (rows // 2)}
    )
    return patched(_parquet(table), 10, FILE_NUM_ROWS, GROUP_NUM_ROWS)


# Formulas behind the disguises a naive filter misses (one file each: the first is refused).
FORMULAS = {
    "at_sum": "=@SUM(A1)",
    "array": "={1,2}",
    "external_ref": "=[evil.xlsx]Sheet1!A1",
    "bang_ref": "=!A1",
    "nbsp": "\u00a0=SUM(A1)",
    "vertical_tab": "\x0b=SUM(A1)",
    "fullwidth_equals": "\uff1dSUM(A1)",
}


def formula_csv(cell: str) -> bytes:
    return f'text,label\ngood film,pos\n"{cell}",neg\n'.encode()


def _parquet(table: Any, **kwargs: Any) -> bytes:
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=max(table.num_rows, 1), **kwargs)
    return sink.getvalue()


@dataclass(frozen=True)
class Hostile:
    name: str
    filename: str
    build: Callable[[], bytes]


def corpus(quick: bool = False) -> list[Hostile]:
    """The files, smallest answers first. `quick` shrinks those whose size is the point."""
    rows = 200_000 if quick else 1_900_000
    return [
        Hostile("parquet_dictionary_bomb", "bomb.parquet", dictionary_bomb),
        Hostile("csv_million_columns", "wide.csv", wide_csv),
        Hostile("jsonl_100k_keys", "wide.jsonl", wide_jsonl),
        Hostile("json_100k_keys", "wide.json", wide_json),
        Hostile("parquet_5000_columns", "wide.parquet", wide_parquet),
        Hostile("parquet_footer_says_10_rows", "lying.parquet", lying_footer),
        *(
            Hostile(f"csv_formula_{name}", "formula.csv", lambda cell=cell: formula_csv(cell))
            for name, cell in FORMULAS.items()
        ),
        Hostile(
            "parquet_compressed_texts",
            "texts.parquet",
            lambda: compressed_parquet(20_000 if quick else 100_000, 1000),
        ),
        Hostile(f"csv_{rows}_short_rows", "rows.csv", lambda: many_rows_csv(rows)),
    ]


# Memory of another process.


def status_bytes(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak(pid: int) -> bool:
    """Set the process's VmHWM back to its VmRSS; False where this kernel or user may not."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@contextmanager
def peak_growth(pid: int | None, every: float = 0.005) -> Iterator[dict[str, int | None]]:
    """Yields a dict that holds, afterwards, the peak RSS growth in bytes (None without a pid)."""
    result: dict[str, int | None] = {"growth": None}
    if pid is None:
        yield result
        return
    before = status_bytes(pid, "VmRSS") or 0
    hwm_ok = reset_peak(pid)
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, status_bytes(pid, "VmRSS") or 0)
            done.wait(every)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        done.set()
        thread.join()
        if hwm_ok:
            peak = max(peak, status_bytes(pid, "VmHWM") or 0)
        result["growth"] = max(peak - before, 0)


# The run.


def upload_each(client: Any, pid: int | None, files: list[Hostile]) -> dict[str, dict[str, Any]]:
    import httpx

    figures: dict[str, dict[str, Any]] = {}
    for item in files:
        content = item.build()
        started = time.monotonic()
        with peak_growth(pid) as peak:
            try:
                resp = client.post(
                    "/v1/datasets",
                    data={"task": "classification"},
                    files={"file": (item.filename, content)},
                )
                status: int | None = resp.status_code
                body = resp.json()
                code = body.get("error", {}).get("code") if status != 201 else "created"
                message = body.get("error", {}).get("message", "")
            except httpx.HTTPError as exc:
                status, code, message = None, type(exc).__name__, str(exc)
        growth = peak["growth"]
        figures[item.name] = {
            "bytes": len(content),
            "status": status,
            "code": code,
            "seconds": round(time.monotonic() - started, 2),
            "api_peak_rss_growth_mb": None if growth is None else round(growth / MB, 1),
            "message": message[:200],
        }
        shown = "-" if growth is None else f"{growth / MB:8.1f}"
        print(
            f"{item.name:28} {len(content):>10,} B  {status!s:>4} {code!s:22} "
            f"{figures[item.name]['seconds']:7.2f} s  {shown} MB",
            flush=True,
        )
    return figures


def local_api_pid(port: int) -> int | None:
    """The API process listening on `port`, found by its command line (`... api ... --port P`)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            words = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "api" in words and "app.cli" in words and str(port) in words:
            return int(proc.name)
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a running service (default: start `tuneserve up`)")
    ap.add_argument("--key", help="an API key with data:write, for --url")
    ap.add_argument("--pid", type=int, help="the API process's pid, for --url")
    ap.add_argument("--quick", action="store_true", help="smaller files where size is the point")
    args = ap.parse_args()
    files = corpus(quick=args.quick)
    print(f"{'file':28} {'size':>12}  {'code':>4} {'answer':22} {'time':>9}  peak RSS growth")
    sys.path.insert(0, str(REPO))
    import httpx

    from benchmarks.train_throughput import base_env, running_service

    if args.url:
        headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
        with httpx.Client(base_url=args.url, timeout=900, headers=headers) as client:
            pid = args.pid or local_api_pid(int(client.base_url.port or 0))
            figures = upload_each(client, pid, files)
    else:
        with (
            tempfile.TemporaryDirectory(prefix="hostile-uploads-") as tmp,
            running_service(Path(tmp) / "data", base_env()) as client,
        ):
            client.timeout = httpx.Timeout(900)
            pid = local_api_pid(int(client.base_url.port or 0))
            figures = upload_each(client, pid, files)
    growths = [f["api_peak_rss_growth_mb"] for f in figures.values()]
    known = [g for g in growths if g is not None]
    failed = [name for name, f in figures.items() if f["status"] is None or f["status"] >= 500]
    print(
        json.dumps(
            {
                "api_pid": pid,
                "quick": args.quick,
                "max_api_peak_rss_growth_mb": max(known) if known else None,
                "failed": failed,
                "files": figures,
            }
        )
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
