# The baseline for bench/gpu-bench.mjs: MoE dispatch and combine with torch.distributed NCCL
# all_to_all_single on W GPUs (one process each; W = the GPUs visible, or --ranks), the common way to do EP without a dedicated
# library. Dispatch: exchange per-rank row counts (all_to_all_single), then the rows — every
# (token, k) pair routed to a rank, fp8 bytes plus fp32 scales per 128 — in one all_to_all_single.
# Combine: the bf16 expert-output rows back in one all_to_all_single, then the weighted sum in fp32
# (index_add_) cast to bf16. Times: CUDA events around each phase (median, p99), and host wall
# time after synchronize. Prints one JSON line.
import argparse
import json
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def pct(xs, p):
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(len(xs) * p / 100))], 3)


def run(rank, world, a, port):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world, device_id=torch.device("cuda", rank))
    T, H, K, E = a.tokens, a.hidden, a.topk, a.experts
    L = E // world
    g = torch.Generator().manual_seed(1234 + rank)
    ids = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)]).cuda()
    w = torch.rand(T, K, generator=g).cuda()
    x = torch.randint(0, 255, (T, H), dtype=torch.uint8, generator=g).cuda()
    scales = torch.ones(T, H // 128, dtype=torch.float32).cuda()

    def dispatch():
        dest = (ids // L).flatten()
        order = torch.argsort(dest, stable=True)
        send = torch.bincount(dest, minlength=world)
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send)
        tok = order // K
        payload = torch.cat([x[tok], scales[tok].view(torch.uint8)], dim=1)
        sc, rc = send.tolist(), recv.tolist()
        out = torch.empty(sum(rc), payload.shape[1], dtype=torch.uint8, device="cuda")
        dist.all_to_all_single(out, payload, rc, sc)
        return out, order, sc, rc

    def combine(rows, order, sc, rc):
        y = torch.zeros(rows, H, dtype=torch.bfloat16, device="cuda")  # expert outputs
        back = torch.empty(sum(sc), H, dtype=torch.bfloat16, device="cuda")
        dist.all_to_all_single(back, y, sc, rc)
        acc = torch.zeros(T, H, dtype=torch.float32, device="cuda")
        acc.index_add_(0, order // K, back.float() * w.flatten()[order][:, None])
        return acc.to(torch.bfloat16)

    ev = lambda: torch.cuda.Event(enable_timing=True)  # noqa: E731
    d_ev, c_ev, d_wall, c_wall = [], [], [], []
    import time

    for i in range(a.warmup + a.iters):
        dist.barrier()
        torch.cuda.synchronize()
        e0, e1, e2 = ev(), ev(), ev()
        t0 = time.perf_counter()
        e0.record()
        out, order, sc, rc = dispatch()
        e1.record()
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        combine(out.shape[0], order, sc, rc)
        e2.record()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        if i >= a.warmup:
            d_ev.append(e0.elapsed_time(e1))
            c_ev.append(e1.elapsed_time(e2))
            d_wall.append((t1 - t0) * 1000)
            c_wall.append((t2 - t1) * 1000)
    res = {
        "rank": rank,
        "rowsReceived": sum(rc),
        "dispatchMs": {"p50": pct(d_ev, 50), "p99": pct(d_ev, 99)},
        "combineMs": {"p50": pct(c_ev, 50), "p99": pct(c_ev, 99)},
        "dispatchWallMs": {"p50": pct(d_wall, 50), "p99": pct(d_wall, 99)},
        "combineWallMs": {"p50": pct(c_wall, 50), "p99": pct(c_wall, 99)},
    }
    gathered = [None] * world
    dist.all_gather_object(gathered, res)
    if rank == 0:
        print(json.dumps({"bench": "moe-nccl-all_to_all_single", "worldSize": world, "torch": torch.__version__,
                          "nccl": ".".join(map(str, torch.cuda.nccl.version())), "tokens": T, "hidden": H,
                          "topk": K, "experts": E, "iters": a.iters, "ranks": gathered}))
    dist.destroy_process_group()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--hidden", type=int, default=7168)
    p.add_argument("--topk", type=int, default=8)
    p.add_argument("--experts", type=int, default=256)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--ranks", type=int, default=max(2, torch.cuda.device_count()))
    a = p.parse_args()
    mp.spawn(run, args=(a.ranks, a, 29511), nprocs=a.ranks, join=True)
