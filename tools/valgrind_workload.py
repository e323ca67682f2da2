"""A short run of every kernel and optimizer class, for tools/valgrind.sh.

Covers both dtypes, sizes around the vector widths, the threaded path, error
paths, and the checkpoint round trip."""
import os
import tempfile

import numpy as np

from fastopt import _core
from fastopt import functional as F
from fastopt import optim

rng = np.random.default_rng(0)
default_threshold = _core.get_parallel_threshold()


def arrays(n, dtype, k):
    return [rng.standard_normal(n).astype(dtype) for _ in range(k)]


for threshold in (default_threshold, 1):
    _core.set_parallel_threshold(threshold)
    for dtype in (np.float32, np.float64):
        for n in (0, 1, 7, 17, 33, 1000):
            p, g, a, b, c = arrays(n, dtype, 5)
            a, b, c = np.abs(a), np.abs(b), np.abs(c)
            for step in (1, 2):
                F.sgd(p, g, a, lr=0.1, momentum=0.9, nesterov=True, step=step)
                F.momentum(p, g, a, lr=0.1)
                F.rmsprop(p, g, a, b, c, centered=True, momentum=0.5)
                F.adam(p, g, a, b, c, step=step, amsgrad=True, weight_decay=0.1)
                F.adagrad(p, g, a, step=step, lr_decay=0.1)
            _core.grad_sumsq([g, g.copy()])
            _core.grad_allfinite([g])
            _core.grad_scale_([g], 0.5)
            _core.grad_clamp_([g], 0.1)
            for bad in (lambda: F.adam(p, g.astype(np.float16), a, b, step=1),
                        lambda: F.adam(p, g, a, a, step=1),
                        lambda: F.sgd(p, g, lr=-1.0)):
                try:
                    bad()
                except (TypeError, ValueError):
                    pass
_core.set_parallel_threshold(default_threshold)

shapes = [(5, 2), (5, 1), (2, 5), (2, 1), (1, 2), (1, 1)]
for cls, kw in [(optim.SGD, {"lr": 0.1, "momentum": 0.9}), (optim.Momentum, {"lr": 0.1}),
                (optim.RMSprop, {"centered": True, "momentum": 0.1}),
                (optim.Adam, {"amsgrad": True}), (optim.AdamW, {}),
                (optim.Adagrad, {"lr_decay": 0.01})]:
    for dtype in (np.float32, np.float64):
        params = {f"w{i}": rng.standard_normal(s).astype(dtype) for i, s in enumerate(shapes)}
        grads = {k: rng.standard_normal(v.shape).astype(dtype) for k, v in params.items()}
        opt = cls(params, **kw)
        for _ in range(3):
            opt.step(grads)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "ckpt.npz")
            opt.save(path)
            opt.load(path)
        opt.load_state_dict(opt.state_dict())
print("workload done")
