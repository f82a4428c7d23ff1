"""Throughput of the SD 2.1 + ControlNet latent policy: rollouts and RL update steps.

Prints, as one JSON document (progress lines go to stderr):
  * rollout: faces/s for a full stochastic DDIM rollout (eta 1, latents and log-probs recorded,
    as the trainer collects them) at batches 9 / 18 / 36;
  * update:  sample-steps/s of one update step (forward through UNet + ControlNet, backward into
    the ControlNet, AdamW step) at micro-batches 6 / 24 / 48, with and without gradient
    checkpointing; the loss is a stand-in (mean square of eps) with the cost of the real one;
  * the forward FLOPs of one face (torch's FLOP counter) and, on CUDA, peak memory per setting.
Compare with SPEC section 9 (one H100, bf16, random weights): rollout 2.9 / 3.7 / 4.0 faces/s,
update 18 sample-steps/s (micro-batch 6, checkpointing) and 97 (48, none), 1.09 TFLOP per forward.

    python bench/sd_throughput.py --tiny                 # CPU, tiny random networks, < 1 minute
    python bench/sd_throughput.py --full                 # GPU, real sizes, random weights, bf16
    python bench/sd_throughput.py --full --compile       # + torch.compile (compile time reported)
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from lrpo.config import DiffusionConfig
from lrpo.diffusion.ddim import DDIMSampler
from lrpo.diffusion.rollout import initial_noise, rollout
from lrpo.diffusion.schedules import make_alphas_cumprod
from lrpo.inference.sampling import sample_generators
from lrpo.policies.latent import LatentPolicy
from lrpo.policies.latent_config import LatentPolicyConfig


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def set_checkpointing(policy: LatentPolicy, on: bool) -> None:
    from lrpo.policies.latent import enable_gradient_checkpointing

    if on:
        enable_gradient_checkpointing(policy.unet)
        enable_gradient_checkpointing(policy.controlnet)
    else:
        for m in [*policy.unet.modules(), *policy.controlnet.modules()]:
            if hasattr(m, "gradient_checkpointing"):
                m.gradient_checkpointing = False


def forward_flops(policy: LatentPolicy, latent: int, device: torch.device) -> float | None:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 4, latent, latent, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        policy(x, torch.tensor([500], device=device), x)
    return float(counter.get_total_flops())


def bench_rollout(net, policy: LatentPolicy, batch: int, steps: int, latent: int, device: torch.device) -> dict:
    sampler = DDIMSampler(make_alphas_cumprod(DiffusionConfig()), steps, eta=1.0)
    cond = torch.randn(batch, 4, latent, latent, device=device)
    gens = sample_generators(list(range(batch)))
    x_T = initial_noise((batch, 4, latent, latent), gens, device=device)

    def model_fn(x_t, t):
        return net(x_t, t, cond)

    warm = DDIMSampler(make_alphas_cumprod(DiffusionConfig()), 2, eta=1.0)
    rollout(model_fn, warm, x_T, prediction="eps", generators=sample_generators(list(range(batch))))
    reset_peak(device)
    sync(device)
    t0 = time.perf_counter()
    rollout(model_fn, sampler, x_T, prediction="eps", generators=gens)
    sync(device)
    dt = time.perf_counter() - t0
    return {"batch": batch, "steps": steps, "seconds": dt, "faces_per_s": batch / dt, "face_steps_per_s": batch * steps / dt, "peak_gib": peak_gib(device)}


def bench_update(net, policy: LatentPolicy, micro: int, latent: int, iters: int, device: torch.device, checkpointing: bool) -> dict:
    set_checkpointing(policy, checkpointing)
    params = policy.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=1e-6, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(micro, 4, latent, latent, generator=g).to(device)
    cond = torch.randn(micro, 4, latent, latent, generator=g).to(device)
    t = torch.randint(1, 1000, (micro,), generator=g).to(device)
    policy.train()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = net(x, t, cond).square().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    step()  # warm-up (allocations, optimiser state, compilation)
    reset_peak(device)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync(device)
    dt = (time.perf_counter() - t0) / iters
    opt.zero_grad(set_to_none=True)  # free the gradients before the next setting
    return {
        "micro_batch": micro, "checkpointing": checkpointing, "seconds_per_step": dt,
        "sample_steps_per_s": micro / dt, "peak_gib": peak_gib(device),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--tiny", action="store_true", help="tiny random networks (default without CUDA)")
    size.add_argument("--full", action="store_true", help="the reference sizes, random weights (default with CUDA)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", choices=["fp32", "bf16"], help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps per rollout (default 50)")
    ap.add_argument("--rollout-batches", type=int, nargs="+", default=[9, 18, 36])
    ap.add_argument("--micro-batches", type=int, nargs="+", default=[6, 24, 48])
    ap.add_argument("--iters", type=int, default=5, help="timed update steps per setting (default 5)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the policy (default mode)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: 1 for --tiny on CPU, else torch's default)")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    full = args.full or (not args.tiny and device.type == "cuda")
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    if args.threads or (not full and device.type == "cpu"):
        torch.set_num_threads(args.threads or 1)  # tiny work: threads only add contention
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    cfg = LatentPolicyConfig.preset("full" if full else "tiny", random_init=True, precision=precision)
    t0 = time.perf_counter()
    policy = LatentPolicy.from_config(cfg, device)
    log(f"built {'full' if full else 'tiny'} policy on {device} ({precision}) in {time.perf_counter() - t0:.1f} s")
    latent = cfg.latent_size
    net = policy
    compile_s = {}
    if args.compile:
        net = torch.compile(policy)
    result: dict = {
        "config": "full" if full else "tiny", "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": precision, "compile": args.compile, "torch": torch.__version__,
        "params_m": {k: sum(p.numel() for p in getattr(policy, k).parameters()) / 1e6 for k in ("unet", "controlnet", "vae")},
        "forward_flops_per_face": forward_flops(policy, latent, device),
        "rollout": [], "update": [],
    }
    for b in args.rollout_batches:
        t0 = time.perf_counter()
        r = bench_rollout(net, policy, b, args.steps, latent, device)
        if args.compile:
            compile_s[f"rollout_{b}"] = time.perf_counter() - t0 - r["seconds"]
        log(f"rollout batch {b}: {r['faces_per_s']:.2f} faces/s ({r['seconds']:.2f} s)")
        result["rollout"].append(r)
    for ckpt in (True, False):
        for m in args.micro_batches:
            try:
                u = bench_update(net, policy, m, latent, args.iters, device, ckpt)
            except torch.OutOfMemoryError:
                u = {"micro_batch": m, "checkpointing": ckpt, "error": "out of memory"}
                torch.cuda.empty_cache()
            log(f"update micro-batch {m}, checkpointing {ckpt}: {u.get('sample_steps_per_s', float('nan')):.1f} sample-steps/s")
            result["update"].append(u)
    if compile_s:
        result["compile_seconds_upper_bound"] = compile_s
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
