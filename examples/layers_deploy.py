"""Deploy an equifast network as plain PyTorch: equifast.nn.export, TorchScript, torch.export.

The exported module is a torch.fx.GraphModule of torch ops (nn.Conv2d, nn.BatchNorm2d, reshapes):
it computes the same function, and a saved copy loads where equifast is not installed.
"""
import io

import torch

import equifast.nn as enn
from equifast.models import Figure3Net

torch.manual_seed(0)
model = Figure3Net(group="D4", width=8).eval()        # the paper's network, D4, view frame
x = torch.rand(4, 1, 28, 28)

plain = enn.export(model)
assert isinstance(plain, torch.fx.GraphModule)
print("plain modules:", sorted({type(m).__name__ for m in plain.modules() if type(m).__module__.startswith("torch.nn") and type(m) is not torch.nn.Module}))
with torch.no_grad():
    assert torch.allclose(plain(x), model(x), atol=1e-5)

scripted = torch.jit.script(plain)                    # TorchScript
program = torch.export.export(plain, (x,))            # torch.export
buffer = io.BytesIO()
torch.export.save(program, buffer)                    # torch.export.load(buffer) needs torch only
buffer.seek(0)
loaded = torch.export.load(buffer).module()
with torch.no_grad():
    assert torch.allclose(scripted(x), model(x), atol=1e-5)
    assert torch.allclose(loaded(x), model(x), atol=1e-5)
print("export, TorchScript and torch.export reproduce the model; saved program:",
      f"{buffer.getbuffer().nbytes // 1024} KiB")

# eval fast path: conv layers cache their expanded filters under no_grad / inference_mode
with torch.inference_mode():
    model(x)
print("cached filter banks:", sum(m._cache is not None for m in model.modules() if hasattr(m, "_cache")))
