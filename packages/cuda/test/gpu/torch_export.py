# A PyTorch process hands a CUDA tensor to a Node agent: export the tensor's IPC handle, let Node
# import it and check the bytes. These are the few lines a user's Python needs:
#
#   storage = t.untyped_storage()
#   (_dev, handle, _size, offset, *_rest) = storage._share_cuda_()
#   send(handle.hex(), offset + t.storage_offset() * t.element_size(), t.numel() * t.element_size())
#
# and the Node side: DeviceBuffer.import(handleHex, { offset, length }).
import json, subprocess, sys
import torch

t = (torch.arange(1 << 20, dtype=torch.int32, device="cuda") * 7 + 3)[1024:]  # a view at an offset
storage = t.untyped_storage()
dev, handle, size, offset, *_ = storage._share_cuda_()
byte_offset = offset + t.storage_offset() * t.element_size()
length = t.numel() * t.element_size()
node = sys.argv[1]
r = subprocess.run([node, sys.argv[2], handle.hex(), str(byte_offset), str(length)], capture_output=True, text=True)
torch.cuda.synchronize()
print(json.dumps({"test": "torch-ipc", "length": length, "node": r.stdout.strip(), "stderr": r.stderr[-500:]}))
# Wrong or missing values fail the check (device-gpu-tests.sh counts exit codes).
got = json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else None
sys.exit(0 if got and got["bad"] == 0 and got["values"] == length // 4 else 1)
