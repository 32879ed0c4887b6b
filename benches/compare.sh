#!/usr/bin/env bash
# Side by side on this machine: the project's whole-model and PPO-iteration benches, and the same
# work in PyTorch eager (benches/pytorch_baseline.py; needs `pip install torch transformers`).
# Prints one table: each workload, both figures with their devices, and the ratio.
#
#   benches/compare.sh [--rounds N] [--skip-gpt2] [--device cpu|cuda|mps]
#
# The options but --rounds go to the PyTorch side (--skip-gpt2 also skips ours). --rounds N
# (default 1) runs ours and then PyTorch's N times in turn and keeps each side's best figure:
# on a machine whose speed drifts between minutes (a shared VM), one run of each compares two
# different moments, and the ratio moves with them.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
rounds=1
torch_args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds)
            [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: --rounds wants a count of 1 or more, got '${2:-}'" >&2; exit 2; }
            rounds=$2
            shift 2
            ;;
        *) torch_args+=("$1"); shift ;;
    esac
done
filter=()
if [[ " ${torch_args[*]:-} " == *" --skip-gpt2 "* ]]; then filter=(tiny); fi

for ((round = 1; round <= rounds; round++)); do
    if [[ $rounds -gt 1 ]]; then echo "== round $round of $rounds =="; fi
    PPO_WGPU_BENCH_JSON="$out/wgpu.jsonl" cargo bench --bench model -- "${filter[@]}"
    PPO_WGPU_BENCH_JSON="$out/wgpu.jsonl" cargo bench --bench ppo_iteration
    python3 benches/pytorch_baseline.py --json "$out/torch.jsonl" "${torch_args[@]}"
done

python3 - "$out/wgpu.jsonl" "$out/torch.jsonl" "$rounds" <<'PY'
import json, sys
rounds = int(sys.argv[3])

def best(path):
    """Each (workload, device)'s best figure over the rounds (and the spread of its figures):
    the highest throughput, or the lowest time where the unit is ms."""
    rows = {}
    for line in open(path):
        r = json.loads(line)
        rows.setdefault((r["workload"], r["device"]), []).append(r)
    out = []
    for runs in rows.values():
        values = [r["value"] for r in runs]
        pick = min if runs[0]["unit"] == "ms" else max
        out.append(dict(runs[0], value=pick(values), low=min(values), high=max(values)))
    return out

ours, theirs = best(sys.argv[1]), best(sys.argv[2])
print()
if rounds > 1:
    print(f"each side's best of {rounds} rounds, run in turn (the spread of a side's figures in brackets)")
print(f"{'workload':<26} {'ppo-wgpu':>14} {'PyTorch':>14} {'unit':<9} {'ppo-wgpu / PyTorch':>19}  (PyTorch device)")
for o in ours:
    for t in [t for t in theirs if t["workload"] == o["workload"]]:
        # Throughputs: higher is better; times (ms): lower is better. The ratio reads as
        # "how fast ppo-wgpu is relative to PyTorch" either way.
        speed = o["value"] / t["value"] if o["unit"] != "ms" else t["value"] / o["value"]
        spread = f"  [{o['low']:.0f}–{o['high']:.0f} vs {t['low']:.0f}–{t['high']:.0f}]" if rounds > 1 else ""
        print(f"{o['workload']:<26} {o['value']:>14.1f} {t['value']:>14.1f} {o['unit']:<9} {speed:>18.2f}x  ({t['device']}){spread}")
print(f"\nppo-wgpu on {ours[0]['device'] if ours else '?'}; {theirs[0]['framework'] if theirs else '?'}")
PY
