"""fastopt.optim against torch.optim: every option combination, 50 steps,
parameters and every torch state compared (tests/conformance.py says how)."""
import numpy as np
import pytest

import fastopt
from fastopt.optim import SGD, Adagrad, Adam, AdamW, RMSprop
from fastopt.rules import RULES
from conformance import IMPLS, check_against_torch, grid

torch = pytest.importorskip("torch")


def _sgd_configs():
    out = []
    for c in grid(momentum=[0, 0.9], dampening=[0, 0.5], weight_decay=[0, 0.1],
                  nesterov=[False, True], maximize=[False, True]):
        if c["nesterov"] and (c["momentum"] == 0 or c["dampening"] != 0):
            continue
        out.append(c)
    return out


CASES = (
    [(SGD, torch.optim.SGD, dict(lr=0.05, **c)) for c in _sgd_configs()]
    + [(RMSprop, torch.optim.RMSprop, dict(lr=0.01, **c)) for c in grid(
        momentum=[0, 0.9], centered=[False, True], weight_decay=[0, 0.1],
        maximize=[False, True])]
    + [(Adam, torch.optim.Adam, dict(lr=0.01, **c)) for c in grid(
        weight_decay=[0, 0.1], amsgrad=[False, True], maximize=[False, True],
        decoupled_weight_decay=[False, True])]
    + [(AdamW, torch.optim.AdamW, dict(lr=0.01, **c)) for c in grid(
        weight_decay=[0, 0.1], amsgrad=[False, True], maximize=[False, True])]
    + [(Adagrad, torch.optim.Adagrad, dict(lr=0.05, **c)) for c in grid(
        lr_decay=[0, 0.01], weight_decay=[0, 0.1],
        initial_accumulator_value=[0, 0.1], maximize=[False, True])]
)
HAND_WRITTEN = len(CASES)


def _table_cases():
    """Every class of the table with a torch counterpart that the grid above
    does not list: each flag on and off, weight decay off and on, at the
    rule's defaults."""
    listed = {cls.__name__ for cls, _, _ in CASES}
    out = []
    for rule in RULES.values():
        # Muon: torch runs Newton-Schulz in bfloat16, far from rtol 1e-10;
        # tests/test_muon.py compares it with torch's algorithm in float64
        # and with torch.optim.Muon within a bfloat16 bound
        if not rule.torch or rule.matrix:
            continue
        for name, fixed, _, _ in rule.classes():
            if name in listed:
                continue
            hypers = [h for h in rule.hypers if h.name not in fixed]
            axes = {h.name: [False, True] for h in hypers if h.check == "flag"}
            if any(h.name == "weight_decay" for h in hypers):
                axes["weight_decay"] = [0, 0.1]
            out += [(getattr(fastopt, name), getattr(torch.optim, name), c)
                    for c in grid(**axes)]
    return out


# a rule added to the table is compared with torch here without editing this file
TABLE_CASES = _table_cases()
CASES += TABLE_CASES


def _case_id(case):
    cls, _, config = case
    return cls.__name__ + "-" + "-".join(f"{k}={v}" for k, v in config.items()
                                         if k != "lr")


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_matches_torch(case, dtype, impl):
    cls, torch_cls, config = case
    opt, topt = check_against_torch(cls, torch_cls, config, dtype, impl)
    if cls is SGD:
        expected = {"momentum_buffer"} if config["momentum"] else set()
        for state in topt.state.values():
            assert set(state) - {"step"} == expected


def test_every_case_is_distinct():
    ids = [_case_id(c) for c in CASES]
    assert len(ids) == len(set(ids))
    assert HAND_WRITTEN == 20 + 16 + 16 + 8 + 16
    assert len(CASES) == HAND_WRITTEN + len(TABLE_CASES)


# every class of the table with a torch counterpart, its learning rate halved
# every 7 steps by StepLR in both libraries
SCHEDULED = [(getattr(fastopt, name), getattr(torch.optim, name))
             for rule in RULES.values() if rule.torch and not rule.matrix
             for name, *_ in rule.classes()]


@pytest.mark.parametrize("classes", SCHEDULED, ids=[c.__name__ for c, _ in SCHEDULED])
def test_matches_torch_under_a_schedule(classes):
    cls, torch_cls = classes
    check_against_torch(cls, torch_cls, {}, np.float64, "for-loop",
                        schedule=("StepLR", dict(step_size=7, gamma=0.5)))
