# A PyTorch model hands its MoE layer to Trellis, stream-ordered, across processes. This process is
# the model: per step it computes hidden states and the router on the GPU (logits = x @ Wg, top-k,
# softmax over the chosen logits — int32 ids and fp32 weights, left where torch put them), on torch's
# current stream. moe-node.mjs is the MoE service: two MoeStream ranks (expert parallel, EP2) whose
# dispatch and combine run from CUDA graphs on the same GPU(s), reading those tensors in place.
#
# Nothing synchronises the host inside a step. The two processes order their streams through CUDA
# interprocess events: torch records `ready` after the router, Node's streams wait for it before
# the graph replays; Node records `done` after combine, torch's stream waits for it before it reads
# the output. The pipe only says "recorded" (an IPC event must be recorded before the other side
# waits on it). The experts are the identity, so the layer's output per token is Σ_k w_k · x — torch
# checks it bit for bit (fp32 products and sums in k order, then bf16), every step.
#
#   python3 examples/torch/moe_gate.py [steps]        (prints one JSON line; exit 1 on any mismatch)
#
# Tensors travel as one CUDA IPC handle of an arena (one allocation: a handle opens once per
# process) and byte offsets into it; PYTORCH_CUDA_ALLOC_CONF=expandable_segments:False keeps the
# handle a cudaIpcMemHandle.
import json
import os
import subprocess
import sys

os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:False"
import torch  # noqa: E402

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 20
W, T, H, E, K = 2, 64, 2048, 16, 4
here = os.path.dirname(os.path.abspath(__file__))
torch.manual_seed(7)
dev = torch.device("cuda", 0)

# The arena: per rank x (bf16 T×H), ids (int32 T×K), w (fp32 T×K), out (bf16 T×H).
sizes = [("x", T * H * 2), ("ids", T * K * 4), ("w", T * K * 4), ("out", T * H * 2)]
layout, at = [], 0
for r in range(W):
    entry = {}
    for name, n in sizes:
        entry[name] = at
        at += (n + 255) // 256 * 256
    layout.append(entry)
arena = torch.zeros(at, dtype=torch.uint8, device=dev)


def view(r, name, dtype, shape):
    off = layout[r][name]
    n = int(torch.tensor([], dtype=dtype).element_size()) * shape[0] * shape[1]
    return arena[off : off + n].view(dtype).view(*shape)


x = [view(r, "x", torch.bfloat16, (T, H)) for r in range(W)]
ids = [view(r, "ids", torch.int32, (T, K)) for r in range(W)]
w = [view(r, "w", torch.float32, (T, K)) for r in range(W)]
out = [view(r, "out", torch.bfloat16, (T, H)) for r in range(W)]
gate = torch.randn(H, E, device=dev, dtype=torch.bfloat16) / H**0.5

_dev, handle, _size, offset, *_ = arena.untyped_storage()._share_cuda_()
ready = torch.cuda.Event(interprocess=True)
ready.record()  # an IPC handle needs a recorded event
node = subprocess.Popen(
    [os.environ.get("NODE", "node"), os.path.join(here, "moe-node.mjs")],
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
)


def send(msg):
    node.stdin.write(json.dumps(msg) + "\n")
    node.stdin.flush()


def recv():
    line = node.stdout.readline()
    if not line:
        raise SystemExit(f"moe-node.mjs exited ({node.wait()})")
    return json.loads(line)


send({"arena": handle.hex(), "base": offset, "bytes": at, "layout": layout, "ready": bytes(ready.ipc_handle()).hex(),
      "shape": {"W": W, "T": T, "H": H, "E": E, "K": K}})
hello = recv()
done = [torch.cuda.Event.from_ipc_handle(dev, bytes.fromhex(h)) for h in hello["done"]]

bad, steps = 0, 0
for step in range(STEPS):
    s = torch.cuda.current_stream()
    for r in range(W):
        x[r].copy_(torch.randn(T, H, device=dev).to(torch.bfloat16))
        logits = (x[r] @ gate).float()
        top, idx = logits.topk(K, dim=-1)
        ids[r].copy_(idx.to(torch.int32))
        w[r].copy_(torch.softmax(top, dim=-1))
        if step % 5 == 4:
            ids[r][T // 2 :] = -1  # half the batch is padding this step: routed nowhere
    ready.record(s)
    send({"step": step})  # "ready is recorded": Node's streams wait for it, then replay
    assert recv()["step"] == step  # "done is recorded"
    for ev in done:
        s.wait_event(ev)
    # The reference on torch's stream, after Node's combine: Σ_k fp32(w_k · x) in k order, then bf16.
    for r in range(W):
        acc = torch.zeros(T, H, dtype=torch.float32, device=dev)
        xf = x[r].float()
        for k in range(K):
            wk = torch.where(ids[r][:, k : k + 1] >= 0, w[r][:, k : k + 1], torch.zeros_like(w[r][:, k : k + 1]))
            acc = acc + wk * xf
        bad += int((acc.to(torch.bfloat16).view(torch.int16) != out[r].view(torch.int16)).sum().item())
    steps += 1

send({"quit": True})
tail = recv()
try:
    node.wait(timeout=30)
except subprocess.TimeoutExpired:
    node.kill()
print(json.dumps({"test": "torch-moe-stream", "steps": steps, "ranks": W, "tokens": T, "hidden": H, "experts": E,
                  "topk": K, "bad": bad, "node": tail, "torch": torch.__version__}))
sys.exit(0 if bad == 0 and steps == STEPS and tail.get("failure") is None else 1)
