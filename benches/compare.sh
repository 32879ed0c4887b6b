#!/usr/bin/env bash
# Side by side on this machine: the project's whole-model and PPO-iteration benches, and the same
# work in PyTorch eager (benches/pytorch_baseline.py; needs `pip install torch transformers`).
# Prints one table: each workload, both figures with their devices, and the ratio.
#
#   benches/compare.sh [--skip-gpt2] [--device cpu|cuda|mps]   (the options go to the PyTorch side;
#                                                              --skip-gpt2 also skips ours)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
filter=()
if [[ " $* " == *" --skip-gpt2 "* ]]; then filter=(tiny); fi

PPO_WGPU_BENCH_JSON="$out/wgpu.jsonl" cargo bench --bench model -- "${filter[@]}"
PPO_WGPU_BENCH_JSON="$out/wgpu.jsonl" cargo bench --bench ppo_iteration
python3 benches/pytorch_baseline.py --json "$out/torch.jsonl" "$@"

python3 - "$out/wgpu.jsonl" "$out/torch.jsonl" <<'PY'
import json, sys
ours = [json.loads(l) for l in open(sys.argv[1])]
theirs = [json.loads(l) for l in open(sys.argv[2])]
print()
print(f"{'workload':<26} {'ppo-wgpu':>14} {'PyTorch':>14} {'unit':<9} {'ppo-wgpu / PyTorch':>19}  (PyTorch device)")
for o in ours:
    for t in [t for t in theirs if t["workload"] == o["workload"]]:
        # Throughputs: higher is better; times (ms): lower is better. The ratio reads as
        # "how fast ppo-wgpu is relative to PyTorch" either way.
        speed = o["value"] / t["value"] if o["unit"] != "ms" else t["value"] / o["value"]
        print(f"{o['workload']:<26} {o['value']:>14.1f} {t['value']:>14.1f} {o['unit']:<9} {speed:>18.2f}x  ({t['device']})")
print(f"\nppo-wgpu on {ours[0]['device'] if ours else '?'}; {theirs[0]['framework'] if theirs else '?'}")
PY
