"""Run: python benchmarks/muon_accuracy.py (needs torch; README, section Muon)."""
# Accuracy of one Newton-Schulz orthogonalisation (Muon's defaults) against
# the same iteration in float64: torch's bfloat16, fastopt's float32.
import numpy as np, torch
from torch.optim._muon import _zeropower_via_newtonschulz as torch_ns
from fastopt import matrix
coef = (3.4445, -4.775, 2.0315)
for shape in [(1024, 1024), (1024, 256), (256, 1024)]:
    rng = np.random.default_rng(0)
    worst = {"torch_bf16": 0.0, "fastopt_f32": 0.0}
    for trial in range(3):
        x = rng.standard_normal(shape)
        exact = matrix.newton_schulz(x, coef, 5, 1e-7)
        t = torch_ns(torch.tensor(x, dtype=torch.float32), coef, 5, 1e-7).float().numpy()
        f = matrix.newton_schulz(x.astype(np.float32), coef, 5, 1e-7)
        scale = np.abs(exact).max()
        worst["torch_bf16"] = max(worst["torch_bf16"], np.abs(t - exact).max() / scale)
        worst["fastopt_f32"] = max(worst["fastopt_f32"], np.abs(f - exact).max() / scale)
    print(shape, {k: f"{v:.2e}" for k, v in worst.items()})
