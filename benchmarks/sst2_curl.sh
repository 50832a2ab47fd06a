#!/usr/bin/env bash
# Fine-tune all-MiniLM-L6-v2 on 4,000 SST-2 training rows with the service's defaults, as a new user
# would over HTTP with curl, and measure: training wall time, the reported validation accuracy and
# the /predict accuracy on the 872 dev rows. Ends with one line of JSON holding the figures.
#
#   .venv/bin/tuneserve up &            # in another terminal; it prints an admin key once
#   TUNESERVE_API_KEY=tsk_... bash benchmarks/sst2_curl.sh [full|lora] [DATA_DIR]
#
# DATA_DIR is the folder with sst2/train.tsv and sst2/dev.tsv (default: ../shared/data).
set -euo pipefail
METHOD=${1:-full}
DATA=${2:-"$(cd "$(dirname "$0")/../.." && pwd)/shared/data"}
API=${TUNESERVE_API:-http://127.0.0.1:8000}
KEY=${TUNESERVE_API_KEY:?set TUNESERVE_API_KEY to an API key (tuneserve up prints one on first start)}
curl() { command curl -H "Authorization: Bearer $KEY" "$@"; }
PY=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

field() { "$PY" -c "import json,sys; print(json.load(sys.stdin)$1)"; }

head -n 4001 "$DATA/sst2/train.tsv" > "$work/train4000.tsv"
t0=$(date +%s.%N)
train=$(curl -sf -F task=classification -F "file=@$work/train4000.tsv" "$API/v1/datasets")
dev=$(curl -sf -F task=classification -F "file=@$DATA/sst2/dev.tsv" "$API/v1/datasets")
t1=$(date +%s.%N)
echo "uploaded: train $(echo "$train" | field "['num_rows']") rows, dev $(echo "$dev" | field "['num_rows']") rows"

case "$METHOD" in
  full) method='{"type": "full"}' ;;
  lora) method='{"type": "lora", "r": 16}' ;;
  *) echo "method must be full or lora" >&2; exit 2 ;;
esac
spec=$(printf '{"task": "classification", "base_model": "sentence-transformers/all-MiniLM-L6-v2",
  "train_dataset": "%s", "validation_dataset": "%s", "method": %s}' \
  "$(echo "$train" | field "['id']")" "$(echo "$dev" | field "['id']")" "$method")
job=$(curl -sf "$API/v1/jobs" -H 'content-type: application/json' -d "$spec")
job_id=$(echo "$job" | field "['id']")
echo "job $job_id submitted ($METHOD)"

start=$(date +%s.%N)
while :; do
  job=$(curl -sf "$API/v1/jobs/$job_id")
  status=$(echo "$job" | field "['status']")
  case "$status" in succeeded|failed|cancelled) break ;; esac
  echo "  $status step $(echo "$job" | field "['progress']['step']")/$(echo "$job" | field "['progress']['total']") loss $(echo "$job" | field "['train_loss']")"
  sleep 15
done
end=$(date +%s.%N)
[ "$status" = succeeded ] || { echo "job ended $status: $job" >&2; exit 1; }
model=$(echo "$job" | field "['model_id']")
val_acc=$(echo "$job" | field "['metrics']['accuracy']")

# /predict on every dev row, 128 inputs per request, and score against the gold labels.
"$PY" - "$DATA/sst2/dev.tsv" "$work" <<'PYEOF'
import csv, json, sys
rows = list(csv.reader(open(sys.argv[1], encoding="utf-8"), delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
for n, i in enumerate(range(0, len(rows), 128)):
    json.dump([r[0] for r in rows[i:i + 128]], open(f"{sys.argv[2]}/in{n:03d}.json", "w"))
json.dump([r[1] for r in rows], open(f"{sys.argv[2]}/gold.json", "w"))
PYEOF
p0=$(date +%s.%N)
for f in "$work"/in*.json; do
  printf '{"model": "%s", "inputs": %s}' "$model" "$(cat "$f")" |
    curl -sf "$API/v1/predict/classification" -H 'content-type: application/json' -d @- >> "$work/out.jsonl"
  echo >> "$work/out.jsonl"
done
p1=$(date +%s.%N)
"$PY" - "$work" "$METHOD" "$job_id" "$model" "$val_acc" "$t0" "$t1" "$start" "$end" "$p0" "$p1" <<'PYEOF'
import json, sys
work, method, job_id, model, val_acc = sys.argv[1:6]
t0, t1, start, end, p0, p1 = map(float, sys.argv[6:12])
gold = json.load(open(f"{work}/gold.json"))
preds = [p[0]["label"] for line in open(f"{work}/out.jsonl") if line.strip()
         for p in json.loads(line)["predictions"]]
assert len(preds) == len(gold), (len(preds), len(gold))
acc = sum(p == g for p, g in zip(preds, gold)) / len(gold)
print(f"method {method}: training wall time {end - start:.0f} s (submit to succeeded)")
print(f"reported validation accuracy {float(val_acc):.4f}; /predict accuracy on {len(gold)} dev rows {acc:.4f}")
print(f"uploads {t1 - t0:.1f} s; /predict of {len(gold)} rows {p1 - p0:.1f} s")
print(json.dumps({"method": method, "job": job_id, "model": model,
                  "train_wall_s": round(end - start, 1), "validation_accuracy": round(float(val_acc), 4),
                  "predict_accuracy": round(acc, 4), "predict_rows": len(gold),
                  "upload_s": round(t1 - t0, 2), "predict_s": round(p1 - p0, 2)}))
PYEOF
