"""The work of `cargo bench --bench model` and `cargo bench --bench ppo_iteration`, done the way
most people would do it: PyTorch eager with Hugging Face transformers. benches/compare.sh runs
both on the same machine and prints them side by side; this script also runs alone.

Needs Python 3.9+ with torch and transformers, outside the Rust test suite:

    pip install torch transformers     # CPU-only wheels: add --index-url https://download.pytorch.org/whl/cpu

Workloads, at the shapes of docs/design.md §3 (random weights, as in the Rust benches):
  tiny forward, tiny reward forward, tiny training step
                                              4 layers, n_embd 128, 4 heads, vocab 512; batch 32 x 64 tokens
  gpt2-small forward, reward forward, training step
                                              GPT-2 small; batch 1 x 128 tokens (--skip-gpt2 to leave out)
  tiny PPO iteration, tiny generation         batch 32, prompt 16 + response 48: KV-cached sampling (τ 0.7, no
                                              top-k), a reward model's scores, the policy (with a value head) and
                                              reference forwards, KL-penalised rewards, GAE and whitening, then
                                              4 epochs x 4 minibatches of the clipped PPO loss with AdamW, as
                                              TRL's PPOTrainer does
  gpt2-small PPO iteration, generation        the same for GPT-2 small: batch 8, prompt 64 + response 64, one
                                              iteration after one that warms up (--skip-gpt2 to leave out)

A training step is forward, cross-entropy, backward, gradient-norm clipping and AdamW. Forward and
training step report tokens/s; the PPO iteration reports ms per iteration and per phase.

    python3 benches/pytorch_baseline.py [--device cpu|cuda|mps] [--json FILE] [--skip-gpt2]

Without --device it runs on the CPU, and also on CUDA or MPS when torch sees one. --json appends one
line per figure: {"workload", "value", "unit", "device", "framework"}.
"""

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

TINY = dict(n_layer=4, n_embd=128, n_head=4, vocab_size=512, n_positions=64)
GPT2_SMALL = dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)


def config(shape):
    return GPT2Config(**shape, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu_new",
                      bos_token_id=None, eos_token_id=None, pad_token_id=0)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(device, fn, seconds=3.0, warmup=1):
    """Mean seconds per call of fn over about `seconds` (after `warmup` calls)."""
    for _ in range(warmup):
        fn()
    sync(device)
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        sync(device)
        took = time.perf_counter() - start
        if took >= seconds:
            return took / calls


def bench_model(device, label, shape, b, t, results):
    torch.manual_seed(1)
    model = GPT2LMHeadModel(config(shape)).to(device)
    value_head = torch.nn.Linear(shape["n_embd"], 1).to(device)
    ids = torch.randint(0, shape["vocab_size"], (b, t), device=device)
    targets = torch.roll(ids.flatten(), -1).view(b, t)
    params = list(model.parameters()) + list(value_head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)

    def forward():
        with torch.no_grad():
            out = model(ids, output_hidden_states=True)
            value_head(out.hidden_states[-1])

    def reward_forward():
        # A reward model's scoring (TRL's AutoModelForSequenceClassification): no LM head.
        with torch.no_grad():
            value_head(model.transformer(ids).last_hidden_state)

    def step():
        out = model(ids, output_hidden_states=True)
        loss = F.cross_entropy(out.logits.view(b * t, -1), targets.view(-1))
        loss = loss + 0.0 * value_head(out.hidden_states[-1]).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    for what, fn in [("forward", forward), ("reward forward", reward_forward), ("training step", step)]:
        secs = timed(device, fn)
        results.append(dict(workload=f"{label} {what}", value=b * t / secs, unit="tokens/s"))
        print(f"  {label} {what}: {b * t / secs:.0f} tokens/s ({secs * 1e3:.1f} ms per {b}x{t} batch)")


def logprobs_of(logits, tokens, temperature):
    """Per token j ≥ 1: log softmax(z_{j−1}/τ)[token j], and the entropy there; 0 at j = 0."""
    logp_all = torch.log_softmax(logits[:, :-1] / temperature, dim=-1)
    logp = logp_all.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    zero = torch.zeros_like(logp[:, :1])
    return torch.cat([zero, logp], 1), torch.cat([zero, entropy], 1)


def masked_whiten(x, mask):
    mean = (x * mask).sum() / mask.sum()
    var = (((x - mean) ** 2) * mask).sum() / (mask.sum() - 1)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def bench_ppo(device, results, label, shape, b, p, r, iterations):
    """One PPO iteration as TRL's PPOTrainer does it, at a shape of the Rust bench: batch b, prompt p
    + response r tokens, the mean of `iterations` after one that warms up."""
    torch.manual_seed(1)
    epochs, minibatches = 4, 4
    temperature, beta, gamma, lam, clip, clip_v, vf_coef = 0.7, 0.05, 1.0, 0.95, 0.2, 0.2, 0.1
    cfg = config(shape)
    policy = GPT2LMHeadModel(cfg).to(device)
    value_head = torch.nn.Linear(cfg.n_embd, 1).to(device)
    reference = GPT2LMHeadModel(cfg).to(device).eval()
    # A reward model as TRL's (AutoModelForSequenceClassification): the transformer and a score
    # head, no LM head.
    reward_model = GPT2Model(cfg).to(device).eval()
    score_head = torch.nn.Linear(cfg.n_embd, 1, bias=False).to(device)
    params = list(policy.parameters()) + list(value_head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
    prompts = torch.randint(1, cfg.vocab_size, (b, p), device=device)
    phases = ["rollout (generation)", "scoring (reward model)", "policy + reference forward, advantages", "update"]
    totals = [0.0] * 4

    for it in range(iterations + 1):
        times = []
        sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            seqs = policy.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=True,
                                   temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=r,
                                   min_new_tokens=r, use_cache=True, pad_token_id=0)
        sync(device)
        times.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        with torch.no_grad():
            full = torch.ones_like(seqs)
            hidden = reward_model(seqs, attention_mask=full).last_hidden_state
            scores = score_head(hidden[:, -1]).squeeze(-1).cpu()
        times.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        mask = torch.zeros(b, p + r, device=device)
        mask[:, p:] = 1.0
        with torch.no_grad():
            out = policy(seqs, attention_mask=full, output_hidden_states=True)
            old_logp, _ = logprobs_of(out.logits, seqs, temperature)
            values = value_head(out.hidden_states[-1]).squeeze(-1)
            old_values = torch.cat([torch.zeros_like(values[:, :1]), values[:, :-1]], 1)
            ref_logp, _ = logprobs_of(reference(seqs, attention_mask=full).logits, seqs, temperature)
            rewards = -beta * (old_logp - ref_logp) * mask
            rewards[:, -1] += scores.to(device)
            advantages = torch.zeros_like(rewards)
            last = torch.zeros(b, device=device)
            for j in reversed(range(p, p + r)):  # TRL's reverse loop
                next_value = old_values[:, j + 1] if j + 1 < p + r else torch.zeros(b, device=device)
                delta = rewards[:, j] + gamma * next_value - old_values[:, j]
                last = delta + gamma * lam * last
                advantages[:, j] = last
            returns = advantages + old_values
            advantages = masked_whiten(advantages, mask)
            stats = torch.stack([(old_logp - ref_logp).sum() / b, advantages.sum()]).cpu()
        del stats
        times.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        for epoch in range(epochs):
            order = torch.randperm(b, device=device)
            for m in range(minibatches):
                rows = order[m * b // minibatches:(m + 1) * b // minibatches]
                out = policy(seqs[rows], attention_mask=full[rows], output_hidden_states=True)
                logp, entropy = logprobs_of(out.logits, seqs[rows], temperature)
                v = value_head(out.hidden_states[-1]).squeeze(-1)
                v = torch.cat([torch.zeros_like(v[:, :1]), v[:, :-1]], 1)
                mk, a, ret, ov = mask[rows], advantages[rows], returns[rows], old_values[rows]
                n = mk.sum()
                ratio = torch.exp(logp - old_logp[rows])
                pg = torch.max(-a * ratio, -a * torch.clamp(ratio, 1 - clip, 1 + clip))
                vc = ov + torch.clamp(v - ov, -clip_v, clip_v)
                vf = 0.5 * torch.max((v - ret) ** 2, (vc - ret) ** 2)
                loss = (pg * mk).sum() / n + vf_coef * (vf * mk).sum() / n
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                with torch.no_grad():
                    stats = torch.stack([loss, (entropy * mk).sum() / n, (((ratio - 1).abs() > clip) * mk).sum() / n])
        stats.cpu()
        sync(device)
        times.append(time.perf_counter() - t0)
        if it > 0:  # the first iteration warms up, as in the Rust bench
            totals = [a + t for a, t in zip(totals, times)]

    total = sum(totals)
    print(f"\n  PPO iteration, {label}: batch {b}, prompt {p} + response {r}, {epochs} epochs x {minibatches} "
          f"minibatches (mean of {iterations})")
    for name, t in zip(phases, totals):
        print(f"    {name:<42} {t / iterations * 1e3:>10.1f} ms {100 * t / total:>6.1f}%")
    print(f"    {'iteration':<42} {total / iterations * 1e3:>10.1f} ms")
    print(f"    generation: {b * r / (totals[0] / iterations):.0f} tokens/s")
    results.append(dict(workload=f"{label} PPO iteration", value=total / iterations * 1e3, unit="ms"))
    results.append(dict(workload=f"{label} generation", value=b * r / (totals[0] / iterations), unit="tokens/s"))


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU {cpu}, {torch.get_num_threads()} threads"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda", "mps"], help="one device (default: cpu, and cuda or mps if present)")
    ap.add_argument("--json", metavar="FILE", help="append the figures as JSON lines")
    ap.add_argument("--skip-gpt2", action="store_true", help="leave out the GPT-2 small workloads")
    args = ap.parse_args()
    devices = [args.device] if args.device else ["cpu"] + (
        ["cuda"] if torch.cuda.is_available() else ["mps"] if torch.backends.mps.is_available() else [])
    for name in devices:
        device = torch.device(name)
        results = []
        print(f"PyTorch {torch.__version__} eager on {device_name(device)}")
        bench_model(device, "tiny", TINY, 32, 64, results)
        if not args.skip_gpt2:
            bench_model(device, "gpt2-small", GPT2_SMALL, 1, 128, results)
        bench_ppo(device, results, "tiny", TINY, 32, 16, 48, iterations=3)
        if not args.skip_gpt2:
            bench_ppo(device, results, "gpt2-small", GPT2_SMALL, 8, 64, 64, iterations=1)
        if args.json:
            with open(args.json, "a") as f:
                for row in results:
                    row.update(device=device_name(device), framework=f"PyTorch {torch.__version__} eager")
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
