#!/usr/bin/env bash
# `make demo`: the whole MiVE chain on tiny random models and generated videos, on the CPU.
#   demo-data -> filter -> harvest-portraits -> synth-portraits -> shards -> trainer fit -> trainer sample
#   -> diagnose-layers -> trainer eval -> report
# Every step is the command a real run uses, with the demo recipes (manifests/demo.toml, train_debug.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAY_USAGE_STATS_ENABLED=0 PYTHONWARNINGS=ignore
BIN=.venv/bin
DEMO_DIR=${DEMO_DIR:-demo_data}
start=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - start ))s] $*"; }

# A demo run starts from scratch: earlier demo outputs are removed (a real run would --resume instead).
rm -rf manifests/demo manifests/demo_sam2 shards/demo runs/debug

step "1/10 generate the demo inputs (OpenVE-style data, portrait clips, tiny random models) into $DEMO_DIR/"
$BIN/dataengine demo-data --out "$DEMO_DIR"

# The four data-engine jobs join one local Ray, started here the way an operator starts a cluster's head
# (`ray start --head`), instead of each starting and stopping its own: the same jobs, less waiting. Its
# workers run in this folder, so the recipe's relative paths mean the same to them. Stopped after step 5.
free_port() { $BIN/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# Token authentication, as Ray turns it on for a cluster: the head and every job read the same token file.
RAY_DIR=$(mktemp -d)
RAY_LOG="$RAY_DIR/ray.log"
RAY_PORT=$(free_port)
$BIN/python -c 'import secrets; print(secrets.token_hex(32))' >"$RAY_DIR/auth_token"
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$RAY_DIR/auth_token"
$BIN/ray start --head --block --disable-usage-stats --node-ip-address=127.0.0.1 --port="$RAY_PORT" \
  --include-dashboard=false --dashboard-agent-listen-port="$(free_port)" >"$RAY_LOG" 2>&1 &
RAY_PID=$!
stop_ray() { kill "$RAY_PID" 2>/dev/null || true; wait "$RAY_PID" 2>/dev/null || true; rm -rf "$RAY_DIR"; }
trap stop_ray EXIT
until grep -qs "block forever" "$RAY_LOG"; do
  kill -0 "$RAY_PID" 2>/dev/null || { cat "$RAY_LOG"; echo "ray start failed"; exit 1; }
  sleep 0.2
done
export RAY_ADDRESS="127.0.0.1:$RAY_PORT"

step "2/10 dataengine filter: score every pair with the (tiny) Qwen3-VL judge, select, dedup"
$BIN/dataengine filter manifests/demo.toml

step "3/10 dataengine harvest-portraits: portrait and background windows found by a person detector in a pool of videos"
# The pool's clips carry their true person boxes (detector backend boxes_file): a person throughout, entering
# late, off centre, absent, leaving, passing through, two people, too small, too short.
$BIN/dataengine harvest-portraits manifests/demo.toml

step "4/10 dataengine synth-portraits: SAM2 prompted where the detector finds the person, compositing, three edit types"
$BIN/dataengine synth-portraits manifests/demo.toml
# The same job through the tiny random SAM2 (transformers' Sam2VideoModel, loaded with from_pretrained) in
# the segmentation actor pool, prompted with the detector's boxes at the prompt frame. Random weights give
# noise masks, so the quality gate rejects every clip: this shows the real segmentation path. The pairs above
# use the generated clips' exact masks (backend mask_files); a real run uses SAM2 with real weights.
$BIN/dataengine synth-portraits manifests/demo.toml run=demo_sam2 portraits.segmenter.backend=transformers \
  portraits.output_dir="$DEMO_DIR/portrait_pairs_sam2"

step "5/10 dataengine shards: Wan VAE latents + Qwen3-VL first/last-layer tokens into WebDataset shards"
$BIN/dataengine shards manifests/demo.toml
$BIN/dataengine verify shards/demo

stop_ray
trap - EXIT
unset RAY_ADDRESS RAY_AUTH_MODE RAY_AUTH_TOKEN_PATH

step "6/10 trainer fit: the debug MiVE DiT, initialised from the tiny Wan DiT, flow matching on the shards"
$BIN/trainer fit manifests/train_debug.toml train.init="$DEMO_DIR/models/wan"

step "7/10 trainer sample: edit a source video with the trained checkpoint"
PAIR=$(ls -d "$DEMO_DIR"/portrait_pairs/portrait_background/*/ | head -n 1)
$BIN/trainer sample runs/debug --source "${PAIR}source.mp4" --reference "${PAIR}reference.png" \
  --instruction "Replace the background with a beach at sunset." --out runs/debug/samples/edited.mp4 --compare

step "8/10 dataengine diagnose-layers: R_mask at every layer of the (tiny) Qwen3-VL, on the portrait clips' masks"
$BIN/dataengine diagnose-layers manifests/demo.toml

step "9/10 trainer eval: the checkpoint edits one pair per category; the judge scores IA CC TS PR VA SC, 0-10"
$BIN/trainer eval manifests/demo.toml

step "10/10 dataengine report: one HTML page: counts, rejections, scores, thumbnails, shards, loss curve, R_mask, evaluation"
$BIN/dataengine report demo

echo
echo "Demo finished in $(( $(date +%s) - start )) s. Outputs:"
echo "  manifests/demo/            pair manifests (openve.parquet, portraits.parquet), rejections, summaries,"
echo "                             the harvest's portrait_windows.parquet and background_windows.parquet"
echo "  $DEMO_DIR/portrait_pairs/  synthesised portrait pairs (source/target mp4, reference png, masks)"
echo "  shards/demo/               WebDataset shards + index.json"
echo "  runs/debug/                checkpoints, metrics.jsonl, samples/edited.mp4 and samples/*compare*.mp4"
echo "  manifests/demo/diagnose/   R_mask per VLM layer: layers.parquet, layers.json (the pick), r_mask.svg"
echo "  runs/debug/eval/           per-clip scores, table.md (means per subset and method), sampled videos"
echo "  manifests/demo/report.html the report (open it in a browser)"
