#!/usr/bin/env bash
# `make demo`: the whole MiVE chain on tiny random models and generated videos, on the CPU, through the one
# command a real run uses (`dataengine reproduce`, docs/reproduce.md) on the demo recipes:
#   demo-data -> filter -> harvest-portraits -> synth-portraits (+ the SAM2 variant) -> shards -> verify
#   -> trainer plan -> trainer fit -> trainer sample -> diagnose-layers -> trainer eval -> report
# It prints the steps and their state up front, runs each as a subprocess of the real CLI, and joins the four
# data-engine jobs to one local Ray head it starts (stopped after the shards).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAY_USAGE_STATS_ENABLED=0 PYTHONWARNINGS=ignore
start=$(date +%s)

# A demo run starts from scratch: earlier demo outputs are removed, with the run's step records in
# manifests/demo/reproduce/ (a real run keeps them: run the same command again and it goes on where it stopped).
rm -rf manifests/demo manifests/demo_sam2 shards/demo runs/debug

.venv/bin/dataengine reproduce manifests/demo.toml --train manifests/train_debug.toml \
  train.init=demo_data/models/wan

echo
echo "Demo finished in $(( $(date +%s) - start )) s. Outputs:"
echo "  manifests/demo/            pair manifests (openve.parquet, portraits.parquet), rejections, summaries,"
echo "                             the harvest's portrait_windows.parquet and background_windows.parquet"
echo "  manifests/demo/reproduce/  each step's record (fingerprint, command, seconds) and its log"
echo "  demo_data/portrait_pairs/  synthesised portrait pairs (source/target mp4, reference png, masks)"
echo "  shards/demo/               WebDataset shards + index.json"
echo "  runs/debug/                checkpoints, metrics.jsonl, samples/edited.mp4 and samples/*compare*.mp4"
echo "  manifests/demo/diagnose/   R_mask per VLM layer: layers.parquet, layers.json (the pick), r_mask.svg"
echo "  runs/debug/eval/           the six dimensions (table.md) and the OpenVE-Bench-style table (bench_table.md)"
echo "  manifests/demo/report.html the report (open it in a browser)"
