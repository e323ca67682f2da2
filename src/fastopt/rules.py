"""The rule table: one description per update rule.

Everything fastopt knows *about* a rule is written here once; the math is
written once in C (``csrc/fastopt/rules.h`` for the loop over elements,
``csrc/coefficients.c`` for the per-step scalars) and once in NumPy
(:mod:`fastopt.reference`, the specification).  From this table

- the build generates the C indices of hyperparameters, coefficients, states
  and options (``fo_table.h``) and the Cython entry points
  (:mod:`fastopt.functional`), so their signatures and checks are this table;
- :mod:`fastopt.optim` makes the optimizer classes;
- the state_dict layout check, the bench rows, ``tools/check_simd.py`` and
  the test tables iterate it.

This module is plain data: setup.py reads it before anything is compiled.
``docs/adding-a-rule.md`` says what a new entry needs.
"""
import dataclasses
from typing import Optional
import math

INF = math.inf


@dataclasses.dataclass(frozen=True)
class Hyper:
    """A hyperparameter.

    check: "real" (a finite number in [lo, hi), or [lo, hi] when closed),
    "flag" (a bool), "tuple" (a tuple or list of ``size`` reals, each
    checked as "real"; AdEMAMix's three betas), "pair" (a "tuple" of size 2;
    betas), "count" (None or an int >= lo; a number of steps such as a
    warm-up's, None for none, which the kernel receives as FO_NO_COUNT),
    "int" (an int in [lo, hi]; Muon's Newton-Schulz steps) or "choice"
    (one of ``choices``, None or strings; the kernel receives its index
    as a double; Muon's adjust_lr_fn).
    label: torch's words for it in "Invalid <label>: x".
    kernel: False for a class-only hyperparameter (e.g. the initial value of
    a state), which the kernel never sees.  keyword_only: after ``*`` in the
    class signature, as torch has it.  late: added to the rule after its
    classes could save checkpoints; a state_dict without it loads with the
    default (as torch sets its later options with setdefault)."""
    name: str
    default: object
    doc: str
    check: str = "real"
    lo: float = 0.0
    hi: float = INF
    closed: bool = False
    label: str = ""
    kernel: bool = True
    keyword_only: bool = False
    size: int = 0
    choices: tuple = ()
    late: bool = False

    @property
    def length(self):
        """The number of entries of a "tuple" or "pair", 0 for the others."""
        if self.check == "pair":
            return 2
        if self.check == "tuple":
            return self.size
        return 0

    def scalars(self):
        """The names of the doubles this hyperparameter gives the kernel."""
        if not self.kernel:
            return ()
        if self.length:
            return tuple(f"{self.name}{i}" for i in range(self.length))
        return (self.name,)


@dataclasses.dataclass(frozen=True)
class State:
    """A state array of the rule, in the kernel's slot order.

    name: the functional argument; key: torch's state key (name if empty);
    when: the hyperparameter whose nonzero (or true) value makes the state
    needed, None when always needed; initial: its start value, a number or
    the name of a class-only hyperparameter; sign: "nonneg" for a state
    that is never negative (a sum or average of squares, a step size), which
    8-bit states code without a sign bit, else "".  shape: "full", the
    parameter's shape (every rule of RULES); for a factored rule (of
    FACTORED_RULES), "row" (the parameter's shape with the last dimension
    set to 1) or "col" (the second-to-last set to 1), present for
    parameters of 2 or more dimensions, or "vector" (the parameter's
    shape), present for parameters of fewer than 2."""
    name: str
    key: str = ""
    when: Optional[str] = None
    initial: object = 0.0
    sign: str = ""
    shape: str = "full"

    def present(self, ndim):
        """Whether a parameter of ``ndim`` dimensions has this state."""
        if self.shape in ("row", "col"):
            return ndim >= 2
        if self.shape == "vector":
            return ndim < 2
        return True

    def shape_for(self, shape):
        """This state's shape for a parameter of shape ``shape``."""
        shape = tuple(shape)
        if self.shape == "row":
            return shape[:-1] + (1,)
        if self.shape == "col":
            return shape[:-2] + (1,) + shape[-1:]
        return shape

    @property
    def state_key(self):
        return self.key or self.name


@dataclasses.dataclass(frozen=True)
class Scalar:
    """A per-tensor scalar state: one double per parameter that the
    per-step coefficients read and advance (NAdam's running product of
    momentum factors, ASGD's eta and mu).  The kernel never sees it; the
    functional entry points take it as a writable float64 array of one
    element after the array states, the optimizers keep it per parameter
    and state_dict holds it as a 0-d float64 array under ``name``.
    initial: its start value, a number or the name of a hyperparameter
    (read at the parameter's first step)."""
    name: str
    initial: object = 0.0


@dataclasses.dataclass(frozen=True)
class Variant:
    """A further optimizer class over the same rule (AdamW over Adam):
    ``fixed`` hyperparameters are set and leave the signature, ``defaults``
    override the rule's."""
    cls: str
    doc: str
    fixed: dict = dataclasses.field(default_factory=dict)
    defaults: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Rule:
    """One update rule.

    step: "required" when the per-step scalars use the step count, None when
    the rule ignores it, or the name of the hyperparameter whose nonzero
    value makes it required (SGD needs the count for its momentum buffer).
    coefficients: the per-step doubles the C side derives from the
    hyperparameters and the step (csrc/coefficients.c), in the kernel's
    names; options: the rule's own switches of the loop (maximize and l2 are
    common to all); scalar_states: its per-tensor scalar states (Scalar);
    reductions: the per-tensor sums of a two-pass rule (LAMB's squared
    norms of the parameter and of the update), which a first pass over
    each tensor computes in a fixed order before the update pass reads the
    per-tensor coefficients made from them (see docs/adding-a-rule.md);
    bench: hyperparameters of the bench rows that differ
    from the defaults; conformance: what its conformance test compares it
    with (torch.optim's class when ``torch`` names one); extra_traffic: the
    arrays a two-pass rule's second look at memory moves beyond the
    one-pass minimum; package: "module.Class" of the installed package the
    rule is conformance-tested against when torch has no counterpart (the
    bench times it as the rule's peer); mixin: the name of a class of
    fastopt.optim that the rule's optimizer classes also derive from, for
    methods of their own (schedule-free's train() and eval())."""
    name: str
    cls: str
    torch: str
    source: str
    doc: str
    hypers: tuple
    states: tuple
    coefficients: tuple
    options: tuple = ()
    scalar_states: tuple = ()
    reductions: tuple = ()
    conformance: str = ""
    extra_traffic: int = 0
    step: object = "required"
    variants: tuple = ()
    bench: dict = dataclasses.field(default_factory=dict)
    package: str = ""
    mixin: str = ""
    matrix: str = ""

    def hyper(self, name):
        for h in self.hypers:
            if h.name == name:
                return h
        raise KeyError(name)

    @property
    def kernel_hypers(self):
        return tuple(h for h in self.hypers if h.kernel)

    @property
    def scalars(self):
        """The hyperparameter doubles of the kernel, in order."""
        return tuple(s for h in self.kernel_hypers for s in h.scalars())

    @property
    def state_keys(self):
        """torch's keys of the array states, in slot order."""
        return tuple(s.state_key for s in self.states)

    @property
    def scalar_keys(self):
        return tuple(s.name for s in self.scalar_states)

    def classes(self):
        """(class name, fixed hyperparameters, default overrides, doc)."""
        return [(self.cls, {}, {}, self.doc)] + [
            (v.cls, v.fixed, v.defaults, v.doc) for v in self.variants]

    def bytes_per_element(self, itemsize, hp=None):
        """Minimal traffic of one step: p read and written, g read, each
        state needed by ``hp`` (the defaults when None) read and written;
        a factored rule's, for a matrix (its row and column states are
        a vanishing part of it)."""
        hp = hp or {}
        used = [s for s in self.states if s.present(2) and s.shape != "row"
                and s.shape != "col"
                and (s.when is None or hp.get(s.when, self.hyper(s.when).default))]
        return (3 + 2 * len(used) + self.extra_traffic) * itemsize

    @property
    def factored(self):
        """States of other shapes than the parameter's (State.shape): the
        rule's first pass is the sums along the last two axes
        (docs/adding-a-rule.md, "Rules with row and column states")."""
        return any(s.shape != "full" for s in self.states)

    @property
    def tested_against(self):
        if self.conformance:
            return self.conformance
        if self.torch:
            return f"`{self.torch}` (torch 2.13), tests/test_torch_conformance.py"
        return f"a float64 transcription of its reference loop, tests/test_{self.name}.py"


def _lr(default):
    return Hyper("lr", default, "learning rate", label="learning rate")


def _weight_decay(default=0.0, keyword_only=False):
    return Hyper("weight_decay", default, "L2 penalty added to the gradient",
                 label="weight_decay value", keyword_only=keyword_only)


def _eps(default):
    return Hyper("eps", default, "added to the denominator", label="epsilon value")


MAXIMIZE = Hyper("maximize", False, "ascend instead of descend", check="flag",
                 keyword_only=True)
# scikit-learn's MLP hands its optimizer finished gradients: its backprop
# (_compute_loss_grad) adds alpha * coef to a layer's summed gradient and
# divides by the batch's sample count or weight sum.  With divisor > 0 the
# loop does those two operations on the raw sum, in their order and dtype;
# by a power of two (batch_size=32) it multiplies by the reciprocal, which
# is the same number: both round the same exact quotient.
SKLEARN_FINISH = (
    Hyper("alpha", 0.0, "L2 penalty: alpha * param is added to the raw "
          "gradient before the division (scikit-learn's alpha)",
          label="alpha value", keyword_only=True, late=True),
    Hyper("divisor", 0.0, "0: the gradient is used as given; > 0: it is a "
          "raw sum, finished as (grad + alpha * param) / divisor",
          label="divisor value", keyword_only=True, late=True))
TRUST_RATIO = Hyper("trust_ratio", True, "scale by the trust ratio; False "
                    "for the parameters optax's mask leaves out",
                    check="flag", keyword_only=True)
BETAS = Hyper("betas", (0.9, 0.999), "decay of the first and second moments",
              check="pair", hi=1.0, label="beta parameter")


RULES = {r.name: r for r in (
    Rule(
        name="sgd", cls="SGD", torch="torch.optim.SGD",
        source="Robbins & Monro 1951; heavy ball: Polyak 1964; Nesterov: "
               "Sutskever et al. 2013; names and defaults: torch.optim.SGD",
        doc="Gradient descent with optional heavy-ball or Nesterov momentum "
            "(torch.optim.SGD).",
        hypers=(_lr(1e-3),
                Hyper("momentum", 0.0, "momentum factor", label="momentum value"),
                Hyper("dampening", 0.0, "dampening of the momentum", hi=1.0,
                      closed=True, label="dampening value"),
                _weight_decay(),
                Hyper("nesterov", False, "Nesterov momentum", check="flag"),
                MAXIMIZE),
        states=(State("momentum_buffer", when="momentum"),),
        coefficients=("lr", "momentum", "one_minus_dampening", "l2"),
        options=("has_momentum", "first_step", "nesterov"),
        step="momentum", bench={"momentum": 0.9}),
    Rule(
        name="momentum", cls="Momentum", torch="",
        conformance="the seed's published test vectors, tests/test_optim.py",
        source="the seed article's exponentially weighted momentum "
               "(Deep Learning Specialization, course 2)",
        doc="The seed's momentum: an exponentially weighted average of "
            "gradients.",
        hypers=(_lr(1e-3),
                Hyper("beta", 0.9, "decay of the velocity", hi=1.0,
                      label="beta value"),
                _weight_decay(keyword_only=True),
                MAXIMIZE),
        states=(State("velocity"),),
        coefficients=("lr", "beta", "one_minus_beta", "l2"),
        step=None),
    Rule(
        name="rmsprop", cls="RMSprop", torch="torch.optim.RMSprop",
        source="Hinton, Lecture 6e of Neural Networks for Machine Learning "
               "(2012); names and defaults: torch.optim.RMSprop",
        doc="RMSProp with torch.optim.RMSprop's centered and momentum "
            "variants.",
        hypers=(_lr(1e-2),
                Hyper("alpha", 0.99, "decay of the square average", hi=1.0,
                      closed=True, label="alpha value"),
                _eps(1e-8),
                _weight_decay(),
                Hyper("momentum", 0.0, "momentum factor", label="momentum value"),
                Hyper("centered", False, "normalise by the variance estimate",
                      check="flag"),
                MAXIMIZE),
        states=(State("square_avg", sign="nonneg"),
                State("grad_avg", when="centered"),
                State("momentum_buffer", when="momentum")),
        coefficients=("lr", "alpha", "one_minus_alpha", "eps", "momentum", "l2"),
        options=("centered", "has_momentum"),
        step=None),
    Rule(
        name="adam", cls="Adam", torch="torch.optim.Adam",
        source="Kingma & Ba 2015; AMSGrad: Reddi et al. 2018; decoupled decay: "
               "Loshchilov & Hutter 2019; names and defaults: torch.optim.Adam",
        doc="Adam with bias correction; AdamW with decoupled_weight_decay.",
        hypers=(_lr(1e-3), BETAS, _eps(1e-8), _weight_decay(),
                Hyper("amsgrad", False, "keep the running maximum of v",
                      check="flag"),
                MAXIMIZE,
                Hyper("decoupled_weight_decay", False,
                      "decay the parameter instead of adding to the gradient",
                      check="flag", keyword_only=True)),
        states=(State("exp_avg"), State("exp_avg_sq", sign="nonneg"),
                State("max_exp_avg_sq", when="amsgrad", sign="nonneg")),
        coefficients=("step_size", "inv_sqrt_bc2", "beta1", "one_minus_beta1",
                      "beta2", "one_minus_beta2", "eps", "l2", "decay"),
        options=("amsgrad",),
        variants=(Variant(
            "AdamW", "Adam with decoupled weight decay (torch.optim.AdamW).",
            fixed={"decoupled_weight_decay": True},
            defaults={"weight_decay": 1e-2}),)),
    Rule(
        name="adagrad", cls="Adagrad", torch="torch.optim.Adagrad",
        source="Duchi, Hazan & Singer 2011; names and defaults: "
               "torch.optim.Adagrad",
        doc="Adagrad with torch.optim.Adagrad's semantics.",
        hypers=(_lr(1e-2),
                Hyper("lr_decay", 0.0, "decay of the learning rate per step",
                      label="lr_decay value"),
                _weight_decay(),
                Hyper("initial_accumulator_value", 0.0,
                      "start value of the sum of squares",
                      label="initial_accumulator_value value", kernel=False),
                _eps(1e-10),
                MAXIMIZE),
        states=(State("state_sum", key="sum", initial="initial_accumulator_value", sign="nonneg"),),
        coefficients=("clr", "eps", "l2")),
    Rule(
        name="lion", cls="Lion", torch="",
        conformance="a float64 transcription of google/automl's loop, tests/test_lion.py",
        source="Chen et al., Symbolic Discovery of Optimization Algorithms "
               "(2023); reference loop and defaults: google/automl, "
               "lion/lion_pytorch.py",
        doc="Lion: the sign of an interpolated momentum, with decoupled "
            "weight decay.",
        hypers=(_lr(1e-4),
                Hyper("betas", (0.9, 0.99),
                      "interpolation of the update and decay of the momentum",
                      check="pair", hi=1.0, label="beta parameter"),
                Hyper("weight_decay", 0.0, "decoupled weight decay",
                      label="weight_decay value"),
                MAXIMIZE),
        states=(State("exp_avg"),),
        coefficients=("lr", "beta1", "one_minus_beta1", "beta2",
                      "one_minus_beta2", "decay"),
        step=None),
    Rule(
        name="adadelta", cls="Adadelta", torch="torch.optim.Adadelta",
        source="Zeiler, ADADELTA: An Adaptive Learning Rate Method (2012); "
               "names and defaults: torch.optim.Adadelta",
        doc="Adadelta: the gradient scaled by the ratio of the RMS of past "
            "updates to the RMS of past gradients (torch.optim.Adadelta).",
        hypers=(_lr(1.0),
                Hyper("rho", 0.9, "decay of the square averages", hi=1.0,
                      closed=True, label="rho value"),
                Hyper("eps", 1e-6, "added inside both square roots",
                      label="epsilon value"),
                _weight_decay(),
                MAXIMIZE),
        states=(State("square_avg", sign="nonneg"), State("acc_delta", sign="nonneg")),
        coefficients=("lr", "rho", "one_minus_rho", "eps", "l2"),
        step=None),
    Rule(
        name="rprop", cls="Rprop", torch="torch.optim.Rprop",
        source="Riedmiller & Braun, A Direct Adaptive Method for Faster "
               "Backpropagation Learning: The RPROP Algorithm (1993); names, "
               "defaults and semantics: torch.optim.Rprop",
        doc="Rprop: a step size per element, grown while the gradient keeps "
            "its sign and shrunk where it flips (torch.optim.Rprop); "
            "step_size starts at lr.",
        hypers=(Hyper("lr", 1e-2, "start value of every step size: the "
                      "optimizer fills step_size with it, a functional "
                      "caller must (a step never reads it)",
                      label="learning rate"),
                Hyper("etas", (0.5, 1.2),
                      "(etaminus, etaplus): step size factors where the "
                      "gradient flips its sign and where it keeps it; "
                      "0 < etaminus < 1 < etaplus",
                      check="pair", label="eta values"),
                Hyper("step_sizes", (1e-6, 50),
                      "(min, max): the bounds of every step size",
                      check="pair", label="step size"),
                MAXIMIZE),
        states=(State("prev"), State("step_size", initial="lr", sign="nonneg")),
        coefficients=("etaminus", "etaplus", "step_size_min", "step_size_max"),
        step=None,
        # the bench starts step_size at 0.1; torch must start there too
        bench={"lr": 0.1}),
    Rule(
        name="adamax", cls="Adamax", torch="torch.optim.Adamax",
        source="Kingma & Ba 2015, section 7.1; names and defaults: "
               "torch.optim.Adamax",
        doc="Adamax: Adam with the infinity norm in place of the second "
            "moment (torch.optim.Adamax).",
        hypers=(_lr(2e-3), BETAS,
                Hyper("eps", 1e-8, "added to |g| inside the maximum",
                      label="epsilon value"),
                _weight_decay(), MAXIMIZE),
        states=(State("exp_avg"), State("exp_inf", sign="nonneg")),
        coefficients=("clr", "beta1", "one_minus_beta1", "beta2", "eps", "l2")),
    Rule(
        name="radam", cls="RAdam", torch="torch.optim.RAdam",
        source="Liu et al., On the Variance of the Adaptive Learning Rate and "
               "Beyond (2020); names, defaults and the rho_t > 5 threshold: "
               "torch.optim.RAdam",
        doc="RAdam: Adam whose adaptive step is rectified by the variance of "
            "its learning rate, and plain bias-corrected momentum while that "
            "variance is intractable (torch.optim.RAdam).",
        hypers=(_lr(1e-3), BETAS, _eps(1e-8), _weight_decay(),
                Hyper("decoupled_weight_decay", False,
                      "decay the parameter instead of adding to the gradient",
                      check="flag"),
                MAXIMIZE),
        states=(State("exp_avg"), State("exp_avg_sq", sign="nonneg")),
        coefficients=("step_size", "beta1", "one_minus_beta1", "beta2",
                      "one_minus_beta2", "eps", "l2", "decay"),
        options=("rectified",)),
    Rule(
        name="nadam", cls="NAdam", torch="torch.optim.NAdam",
        source="Dozat, Incorporating Nesterov Momentum into Adam (2016); "
               "momentum decay: Timothy Dozat's schedule as torch.optim.NAdam "
               "has it; names and defaults: torch.optim.NAdam",
        doc="NAdam: Adam with Nesterov momentum, whose momentum factor warms "
            "up with momentum_decay (torch.optim.NAdam); mu_product, the "
            "running product of the factors, is a per-tensor state.",
        hypers=(_lr(2e-3), BETAS, _eps(1e-8), _weight_decay(),
                Hyper("momentum_decay", 4e-3, "psi of the momentum factor "
                      "beta1 * (1 - 0.5 * 0.96^(t * psi))",
                      label="momentum_decay value"),
                Hyper("decoupled_weight_decay", False,
                      "decay the parameter instead of adding to the gradient",
                      check="flag"),
                MAXIMIZE),
        states=(State("exp_avg"), State("exp_avg_sq", sign="nonneg")),
        scalar_states=(Scalar("mu_product", initial=1.0),),
        coefficients=("beta1", "one_minus_beta1", "beta2", "one_minus_beta2",
                      "inv_sqrt_bc2", "eps", "grad_coef", "exp_avg_coef", "l2", "decay")),
    Rule(
        name="asgd", cls="ASGD", torch="torch.optim.ASGD",
        source="Polyak & Juditsky, Acceleration of Stochastic Approximation "
               "by Averaging (1992); names, defaults and the eta and mu "
               "schedules: torch.optim.ASGD",
        doc="Averaged SGD: decayed gradient steps of size eta, and ax, the "
            "running average of the parameters from step t0 on "
            "(torch.optim.ASGD); eta and mu are per-tensor states.  "
            "Optimizer.swap('ax') swaps the average into the parameters.",
        hypers=(_lr(1e-2),
                Hyper("lambd", 1e-4, "decay term of eta and of the parameter",
                      label="lambd value"),
                Hyper("alpha", 0.75, "power of the eta schedule",
                      label="alpha value"),
                Hyper("t0", 1e6, "the step from which ax averages",
                      label="t0 value"),
                _weight_decay(), MAXIMIZE),
        states=(State("ax"),),
        scalar_states=(Scalar("eta", initial="lr"), Scalar("mu", initial=1.0)),
        coefficients=("decay", "eta", "mu", "l2"),
        options=("average",)),
    Rule(
        name="ademamix", cls="AdEMAMix", torch="",
        conformance="a float64 transcription of apple/ml-ademamix's loop, "
                    "tests/test_ademamix.py",
        source="Pagliardini, Ablin & Grangier, The AdEMAMix Optimizer: Better, "
               "Faster, Older (ICLR 2025); reference loop, names and defaults: "
               "apple/ml-ademamix, pytorch/ademamix.py",
        doc="AdEMAMix: Adam whose numerator adds alpha times a slow EMA of "
            "the gradients (beta3, not bias-corrected) to the fast one, with "
            "the reference's optional linear warm-ups of alpha and of beta3 "
            "(on the half-life scale) and decoupled weight decay.  Defaults "
            "are the PyTorch reference's (alpha=2.0); optax's ademamix "
            "defaults to alpha=5.0.",
        hypers=(_lr(1e-3),
                Hyper("betas", (0.9, 0.999, 0.9999),
                      "(beta1, beta2, beta3): decay of the fast EMA, of the "
                      "second moment and (after its warm-up) of the slow EMA",
                      check="tuple", size=3, hi=1.0, label="beta parameter"),
                Hyper("alpha", 2.0, "weight of the slow EMA (after its "
                      "warm-up); optax's default is 5.0",
                      label="alpha value"),
                Hyper("beta3_warmup", None, "steps over which beta3 rises "
                      "from beta1, linearly in half-life; None: no warm-up",
                      check="count", label="beta3_warmup value"),
                Hyper("alpha_warmup", None, "steps over which alpha rises "
                      "linearly from 0; None: no warm-up",
                      check="count", label="alpha_warmup value"),
                _eps(1e-8),
                Hyper("weight_decay", 0.0, "decoupled weight decay, as AdamW",
                      label="weight_decay value"),
                MAXIMIZE),
        states=(State("exp_avg_fast"), State("exp_avg_slow"),
                State("exp_avg_sq", sign="nonneg")),
        coefficients=("beta1", "one_minus_beta1", "beta2", "one_minus_beta2",
                      "beta3", "one_minus_beta3", "inv_sqrt_bc2", "eps",
                      "fast_coef", "slow_coef", "decay")),
    Rule(
        name="adopt", cls="ADOPT", torch="",
        conformance="a float64 transcription of iShohei220/adopt's loop, "
                    "tests/test_adopt.py",
        source="Taniguchi et al., ADOPT: Modified Adam Can Converge with Any "
               "beta2 with the Optimal Rate (NeurIPS 2024); reference loop, "
               "names, defaults and clipping schedule: iShohei220/adopt, "
               "src/adopt/adopt.py",
        doc="ADOPT: the gradient normalised by the previous step's second "
            "moment, max(sqrt(v), eps), clipped, then averaged into the "
            "momentum.  Step 1 only sets v = g * g (the parameter and the "
            "momentum stay as they are); at step t > 1 the clip is "
            "(t - 1)^0.25, the reference's default clip_lambda (its step "
            "counter starts at 0).  clip=False is the reference's "
            "clip_lambda=None, the unclipped ADOPT; other schedules are not "
            "offered.  decouple=True decays the parameter as AdamW.",
        hypers=(_lr(1e-3),
                Hyper("betas", (0.9, 0.9999),
                      "decay of the momentum and of the second moment",
                      check="pair", hi=1.0, label="beta parameter"),
                Hyper("eps", 1e-6, "lower bound of sqrt(v)",
                      label="epsilon value"),
                Hyper("clip", True, "clip the normalised gradient to "
                      "+-(t - 1)^0.25 (the reference's default clip_lambda); "
                      "False: no clipping (clip_lambda=None)", check="flag"),
                _weight_decay(),
                Hyper("decouple", False,
                      "decay the parameter instead of adding to the gradient",
                      check="flag"),
                MAXIMIZE),
        states=(State("exp_avg"), State("exp_avg_sq", sign="nonneg")),
        coefficients=("lr", "beta1", "one_minus_beta1", "beta2",
                      "one_minus_beta2", "eps", "clip_value", "l2", "decay"),
        options=("first_step", "clip")),
    Rule(
        name="lamb", cls="LAMB", torch="",
        conformance="a float64 transcription of optax.lamb's chain, "
                    "tests/test_lamb_lars.py", extra_traffic=3,
        source="You et al., Large Batch Optimization for Deep Learning: "
               "Training BERT in 76 minutes (ICLR 2020); formulation and "
               "defaults: optax.lamb (scale_by_adam, add_decayed_weights, "
               "scale_by_trust_ratio, scale_by_learning_rate)",
        doc="LAMB: Adam's bias-corrected direction plus weight_decay times "
            "the parameter, scaled per tensor by the trust ratio "
            "||param|| / ||update|| (1 where either norm is 0).  The norms "
            "are computed in a first pass over each tensor, in double, in "
            "an order fixed by the element index.  trust_ratio=False (per "
            "group) leaves the ratio at 1, as optax's mask does.  optax "
            "has no default learning rate; eps_root is not offered (optax's "
            "default, 0).",
        hypers=(_lr(1e-3), BETAS, _eps(1e-6),
                Hyper("weight_decay", 0.0, "weight_decay times the parameter "
                      "is added to the update before the trust ratio",
                      label="weight_decay value"),
                TRUST_RATIO,
                MAXIMIZE),
        states=(State("exp_avg"), State("exp_avg_sq", sign="nonneg")),
        coefficients=("lr", "beta1", "one_minus_beta1", "beta2",
                      "one_minus_beta2", "inv_bc1", "inv_sqrt_bc2", "eps",
                      "weight_decay", "trust_ratio"),
        reductions=("param_sq", "update_sq")),
    Rule(
        name="lars", cls="LARS", torch="",
        conformance="a float64 transcription of optax.lars's chain, "
                    "tests/test_lamb_lars.py", extra_traffic=2,
        source="You, Gitman & Ginsburg, Large Batch Training of "
               "Convolutional Networks (2017); formulation and defaults: "
               "optax.lars (add_decayed_weights, scale_by_trust_ratio, "
               "scale_by_learning_rate, trace)",
        doc="LARS: the gradient plus weight_decay times the parameter, "
            "scaled per tensor by trust_coefficient * ||param|| / "
            "(||update|| + eps) (1 where either norm is 0), times the "
            "learning rate, then heavy-ball momentum (optax's trace, so the "
            "momentum applies after the learning rate).  The norms are "
            "computed in a first pass over each tensor, in double, in an "
            "order fixed by the element index.  trust_ratio=False (per "
            "group) leaves the ratio at 1, as optax's mask does.  optax has "
            "no default learning rate.",
        hypers=(_lr(1.0),
                Hyper("momentum", 0.9, "decay of the trace", label="momentum value"),
                Hyper("weight_decay", 0.0, "weight_decay times the parameter "
                      "is added to the gradient before the trust ratio",
                      label="weight_decay value"),
                Hyper("trust_coefficient", 1e-3, "scale of the trust ratio",
                      label="trust_coefficient value"),
                Hyper("eps", 0.0, "added to the update's norm",
                      label="epsilon value"),
                Hyper("nesterov", False, "Nesterov momentum (optax's trace)",
                      check="flag"),
                TRUST_RATIO,
                MAXIMIZE),
        states=(State("momentum_buffer"),),
        coefficients=("lr", "momentum", "weight_decay", "trust_coefficient",
                      "eps", "trust_ratio"),
        options=("nesterov",), step=None,
        reductions=("param_sq", "update_sq")),
    Rule(
        name="sklearn_adam", cls="SklearnAdam", torch="",
        conformance="scikit-learn's own AdamOptimizer (the installed "
                    "package), tests/test_sklearn_rules.py",
        source="Kingma & Ba 2015, in scikit-learn's convention: "
               "sklearn.neural_network._stochastic_optimizers.AdamOptimizer "
               "(scikit-learn 1.6-1.9), its operation order and defaults",
        doc="Adam as scikit-learn's MLP has it: eps added to the raw sqrt(v) "
            "(not bias-corrected) and both bias corrections folded into the "
            "step size lr * sqrt(1 - beta2^t) / (1 - beta1^t), computed in "
            "double; the update is formed and added in double, so float32 "
            "parameters round once, as NumPy does for AdamOptimizer.  "
            "With divisor > 0 the gradient is the layer's raw sum, finished "
            "in the loop as scikit-learn's backprop does.  "
            "fastopt.sklearn runs scikit-learn's training on it.",
        hypers=(_lr(1e-3), BETAS, _eps(1e-8), MAXIMIZE) + SKLEARN_FINISH,
        states=(State("exp_avg"), State("exp_avg_sq", sign="nonneg")),
        coefficients=("neg_step_size", "beta1", "one_minus_beta1", "beta2",
                      "one_minus_beta2", "eps", "alpha", "scale"),
        options=("finish", "reciprocal")),
    Rule(
        name="sklearn_sgd", cls="SklearnSGD", torch="",
        conformance="scikit-learn's own SGDOptimizer (the installed "
                    "package), tests/test_sklearn_rules.py",
        source="Polyak 1964; Nesterov form: Sutskever et al. 2013; "
               "scikit-learn's velocity form, operation order and defaults: "
               "sklearn.neural_network._stochastic_optimizers.SGDOptimizer "
               "(scikit-learn 1.6-1.9)",
        doc="SGD with momentum as scikit-learn's MLP has it: the velocity "
            "u = momentum * u - lr * g, then with nesterov the step "
            "momentum * u - lr * g, else u, added to the parameter; lr is "
            "the current rate of scikit-learn's schedule.  "
            "With divisor > 0 the gradient is the layer's raw sum, finished "
            "in the loop as scikit-learn's backprop does.  "
            "fastopt.sklearn runs scikit-learn's training on it.",
        hypers=(Hyper("lr", 0.1, "learning rate (scikit-learn's "
                      "learning_rate_init, or its schedule's current rate)",
                      label="learning rate"),
                Hyper("momentum", 0.9, "momentum factor", label="momentum value"),
                Hyper("nesterov", True, "Nesterov's step", check="flag"),
                MAXIMIZE) + SKLEARN_FINISH,
        states=(State("velocity"),),
        coefficients=("lr", "momentum", "alpha", "scale"),
        options=("nesterov", "finish", "reciprocal"),
        step=None),
    Rule(
        name="adamw_schedulefree", cls="AdamWScheduleFree", torch="",
        conformance="the schedulefree package 1.4.1 (AdamWScheduleFree, on torch "
                    "CPU), tests/test_schedulefree.py",
        source="Defazio et al., The Road Less Scheduled (NeurIPS 2024); "
               "reference loop, names and defaults: facebookresearch/"
               "schedule_free, the schedulefree package 1.4.1, "
               "schedulefree/adamw_schedulefree.py",
        doc="Schedule-free AdamW: no learning-rate schedule; the parameters "
            "hold y, an interpolation between z (the base AdamW-style "
            "iterate, without first moment) and x (a weighted average of "
            "the z's), and the step moves y and z.  train() and eval() swap "
            "y and x in the parameters as the package's do (eval() before "
            "evaluating or saving the model, train() before stepping again; "
            "a step in eval mode raises RuntimeError).  The package's "
            "per-group k, lr_max and weight_sum are kept per parameter: the "
            "step count and the scalar states lr_max and weight_sum; they "
            "advance only when the parameter gets a gradient, where the "
            "package advances them for every parameter of the group.  "
            "Unlike the package, the gradients are never written.  At a "
            "tensor's first step (step=1) z is set from the parameter, as "
            "the package makes it; what z held is not read.",
        hypers=(_lr(0.0025), BETAS, _eps(1e-8),
                Hyper("weight_decay", 0.0, "weight decay, added to the "
                      "normalised gradient at y", label="weight_decay value"),
                Hyper("warmup_steps", 0, "steps of linear learning-rate "
                      "warm-up, lr * t / warmup_steps; 0 or None: none",
                      check="count", label="warmup_steps value"),
                Hyper("r", 0.0, "power of the step count t^r in the "
                      "averaging weights", label="r value"),
                Hyper("weight_lr_power", 2.0, "power of lr_max in the "
                      "averaging weights", label="weight_lr_power value"),
                MAXIMIZE),
        states=(State("z"), State("exp_avg_sq", sign="nonneg")),
        scalar_states=(Scalar("lr_max", initial=-1.0),
                       Scalar("weight_sum", initial=0.0)),
        coefficients=("beta2", "one_minus_beta2", "inv_sqrt_bc2", "eps",
                      "weight_decay", "lerp", "y_coef", "lr"),
        options=("first_step", "lerp_from_z", "decay"),
        package="schedulefree.AdamWScheduleFree", mixin="ScheduleFree"),
    Rule(
        name="sgd_schedulefree", cls="SGDScheduleFree", torch="",
        conformance="the schedulefree package 1.4.1 (SGDScheduleFree, on torch "
                    "CPU), tests/test_schedulefree.py",
        source="Defazio et al., The Road Less Scheduled (NeurIPS 2024); "
               "reference loop, names and defaults: facebookresearch/"
               "schedule_free, the schedulefree package 1.4.1, "
               "schedulefree/sgd_schedulefree.py",
        doc="Schedule-free SGD: no learning-rate schedule; the parameters "
            "hold y, an interpolation between z (the SGD iterate) and x (a "
            "weighted average of the z's), and the step moves y and z.  "
            "train() and eval() swap y and x in the parameters as the "
            "package's do (eval() before evaluating or saving the model, "
            "train() before stepping again; a step in eval mode raises "
            "RuntimeError).  The package's per-group k, lr_max and "
            "weight_sum are kept per parameter: the step count and the "
            "scalar states lr_max and weight_sum; they advance only when "
            "the parameter gets a gradient, where the package advances them "
            "for every parameter of the group.  Unlike the package, the "
            "gradients are never written.  At a tensor's first step "
            "(step=1) z is set from the parameter, as the package makes "
            "it; what z held is not read.",
        hypers=(_lr(1.0),
                Hyper("momentum", 0.9, "interpolation of y between z and x "
                      "(eval() needs momentum > 0)", hi=1.0,
                      label="momentum value"),
                _weight_decay(),
                Hyper("warmup_steps", 0, "steps of linear learning-rate "
                      "warm-up, lr * t / warmup_steps; 0 or None: none",
                      check="count", label="warmup_steps value"),
                Hyper("r", 0.0, "power of the step count t^r in the "
                      "averaging weights", label="r value"),
                Hyper("weight_lr_power", 2.0, "power of lr_max in the "
                      "averaging weights", label="weight_lr_power value"),
                MAXIMIZE),
        states=(State("z"),),
        scalar_states=(Scalar("lr_max", initial=-1.0),
                       Scalar("weight_sum", initial=0.0)),
        coefficients=("lerp", "y_coef", "lr", "l2"),
        options=("first_step", "lerp_from_z"),
        package="schedulefree.SGDScheduleFree", mixin="ScheduleFree"),
    Rule(
        name="muon", cls="Muon", torch="torch.optim.Muon",
        conformance="`torch.optim.Muon` (torch 2.13; bfloat16 Newton-Schulz, "
                    "within a bound bfloat16 explains) and a float64 "
                    "transcription of its step, tests/test_muon.py",
        source="Jordan et al., Muon: An optimizer for hidden layers in neural "
               "networks (2024), Newton-Schulz coefficients and the "
               "\"original\" lr adjustment; Liu et al., Muon is Scalable for "
               "LLM Training (2025), \"match_rms_adamw\"; names, defaults "
               "and step: torch.optim.Muon (torch 2.13)",
        doc="Muon: momentum (an EMA, torch's lerp), optionally Nesterov's, "
            "orthogonalised by ns_steps Newton-Schulz iterations (matrix "
            "products with NumPy's matmul, in the parameter's dtype, on the "
            "update divided by max(||update||_F, eps), transposed when it "
            "has more rows than columns), then param * (1 - lr * "
            "weight_decay) minus the adjusted lr times it.  adjust_lr_fn: "
            "None or \"original\" scale lr by sqrt(max(1, rows / cols)), "
            "\"match_rms_adamw\" by 0.2 * sqrt(max(rows, cols)).  2-D "
            "parameters only: give biases, embeddings and other tensors to "
            "another optimizer such as AdamW.  torch runs Newton-Schulz in "
            "bfloat16 whatever the parameter's dtype; fastopt in the "
            "parameter's dtype, which is more accurate.  maximize is not in "
            "torch's Muon.",
        hypers=(_lr(1e-3),
                Hyper("weight_decay", 0.1, "decoupled weight decay: the "
                      "parameter is multiplied by 1 - lr * weight_decay",
                      label="weight_decay value"),
                Hyper("momentum", 0.95, "the momentum buffer's EMA factor "
                      "(buffer = lerp(buffer, grad, 1 - momentum))",
                      label="momentum value"),
                Hyper("nesterov", True, "orthogonalise lerp(grad, buffer, "
                      "momentum) instead of the buffer", check="flag"),
                Hyper("ns_coefficients", (3.4445, -4.775, 2.0315),
                      "(a, b, c) of the quintic Newton-Schulz iteration "
                      "X = a X + (b A + c A A) X, A = X X^T", check="tuple",
                      size=3, lo=-INF, label="ns_coefficients value"),
                Hyper("eps", 1e-7, "the update is divided by max(its "
                      "Frobenius norm, eps)", label="epsilon value"),
                Hyper("ns_steps", 5, "Newton-Schulz iterations (torch "
                      "refuses 100 or more)", check="int", hi=99,
                      label="ns_steps value"),
                Hyper("adjust_lr_fn", None, "None or \"original\": lr * "
                      "sqrt(max(1, rows / cols)); \"match_rms_adamw\": lr * "
                      "0.2 * sqrt(max(rows, cols))", check="choice",
                      choices=(None, "original", "match_rms_adamw"),
                      label="adjust_lr_fn value"),
                MAXIMIZE),
        states=(State("momentum_buffer"),),
        coefficients=("buf_w", "nest_w", "decay", "lr"),
        options=("nesterov", "buf_from_grad", "nest_from_buf", "post"),
        step=None, matrix="muon", extra_traffic=2),
)}

# Rules whose states are not all of the parameter's shape (State.shape):
# the kernel side is the same table machinery (fo_run with an axis pass
# before the two passes of a rule with reductions), but the doors that
# assume parameter-shaped states (the generated functional entry points, the
# optimizers' Plan, the table-driven tests) do not take them.  Each has a
# functional door, a reference and a class of its own (fastopt.factored)
# and a test file of its own.  The C side numbers them after RULES.
FACTORED_RULES = {r.name: r for r in (
    Rule(
        name="adafactor", cls="Adafactor", torch="torch.optim.Adafactor",
        conformance="`torch.optim.Adafactor` (torch 2.13), tests/test_adafactor.py",
        source="Shazeer & Stern, Adafactor: Adaptive Learning Rates with "
               "Sublinear Memory Cost (ICML 2018); the formulation of "
               "torch.optim.Adafactor (torch 2.13, _single_tensor_adafactor: "
               "beta2_t = 1 - t^beta2_decay, relative step rho_t = "
               "min(lr, 1/sqrt(t)), no first moment), its names and defaults",
        doc="Adafactor: a factored second moment (row and column means of "
            "g * g, lerped with weight t^beta2_decay) for parameters of 2 or "
            "more dimensions (the leading ones are batch), a full one for "
            "vectors and scalars; the step is max(eps2, RMS(param)) * "
            "min(lr, 1/sqrt(t)), divided by max(1, RMS(update) / d).  eps1 "
            "None is the dtype's machine epsilon.  Row and column sums are "
            "in double, each in an order fixed by the element index; the "
            "RMS's are sums of squares as LAMB's.",
        hypers=(_lr(1e-2),
                Hyper("beta2_decay", -0.8, "exponent of the second moment's "
                      "lerp weight t^beta2_decay (<= 0)",
                      label="beta2_decay", lo=-INF, hi=0.0, closed=True),
                Hyper("eps", (None, 1e-3), "eps1 (floor of the row mean and, "
                      "squared, of the variance estimate; None: the dtype's "
                      "machine epsilon) and eps2 (floor of the parameter's "
                      "RMS)", check="pair", label="epsilon"),
                Hyper("d", 1.0, "clipping threshold of the update's RMS",
                      lo=1.0, label="Clipping threshold d"),
                Hyper("weight_decay", 0.0, "decoupled weight decay",
                      label="weight_decay"),
                MAXIMIZE),
        states=(State("row_var", shape="row"), State("col_var", shape="col"),
                State("variance", shape="vector")),
        coefficients=("weight", "one_minus_weight", "rho", "eps1", "eps1_sq",
                      "eps2", "d", "decay"),
        options=("dtype_eps",), reductions=("param_sq", "update_sq"),
        extra_traffic=3),
)}

# The most state slots and coefficients a rule may have (csrc/fastopt/kernels.h).
MAX_STATES = 4
MAX_REDUCTIONS = 2
MAX_SCALAR_STATES = 4
MAX_COEFFICIENTS = 16
MAX_SCALARS = 16


def readme_table():
    """The README's table of rules (Markdown), made from the table: class,
    source, what the conformance test compares with, and the bytes a step
    moves per float32 element at the class's defaults."""
    lines = ["| class | source (paper, reference implementation, defaults) | "
             "conformance test against | bytes/element (float32) |",
             "|---|---|---|---|"]
    for r in list(RULES.values()) + list(FACTORED_RULES.values()):
        for name, fixed, defaults, _ in r.classes():
            hp = {h.name: defaults.get(h.name, h.default) for h in r.hypers}
            hp.update(fixed)
            passes = (" (three passes)" if r.factored
                      else " (two passes)" if r.reductions else "")
            if r.matrix:
                passes = " (two passes around the matrix step)"
            lines.append(f"| `{name}` | {r.source} | {r.tested_against} | "
                         f"{r.bytes_per_element(4, hp)}{passes} |")
    return "\n".join(lines)
