"""The update rules in plain NumPy: the definition every kernel must match.

Each function has the signature of its twin in :mod:`fastopt.functional` and
performs the same floating-point operations in the same order, one line per
line of the math, so that for float32 and float64 alike the kernel's result
equals this one bit for bit.  Hyperparameters are Python floats, which NumPy
rounds to the arrays' dtype, exactly as the kernels round their coefficients.
Per-step scalars come from the helpers that the kernels use.

These functions check nothing: they are the specification, not the API.
"""
import numpy as np

from fastopt._core import (
    adagrad_clr,
    adam_inv_sqrt_bc2,
    adam_step_size,
    decay_factor,
)

__all__ = ["sgd", "momentum", "rmsprop", "adam", "adagrad"]


def _start(param, grad, weight_decay, maximize):
    """The gradient every rule starts from: -g when maximizing, plus L2 decay."""
    g = -grad if maximize else grad
    if weight_decay != 0:
        g = g + weight_decay * param
    return g


def sgd(param, grad, momentum_buffer=None, *, lr=1e-3, momentum=0.0,
        dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False,
        step=None):
    lr, momentum, dampening = float(lr), float(momentum), float(dampening)
    g = _start(param, grad, float(weight_decay), maximize)
    if momentum != 0:
        if step == 1:
            momentum_buffer[...] = g
        else:
            momentum_buffer[...] = momentum * momentum_buffer + (1 - dampening) * g
        g = g + momentum * momentum_buffer if nesterov else momentum_buffer
    param[...] = param - lr * g


def momentum(param, grad, velocity, *, lr=1e-3, beta=0.9, weight_decay=0.0,
             maximize=False):
    lr, beta = float(lr), float(beta)
    g = _start(param, grad, float(weight_decay), maximize)
    velocity[...] = beta * velocity + (1 - beta) * g
    param[...] = param - lr * velocity


def rmsprop(param, grad, square_avg, grad_avg=None, momentum_buffer=None, *,
            lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
            centered=False, maximize=False):
    lr, alpha, eps, momentum = float(lr), float(alpha), float(eps), float(momentum)
    g = _start(param, grad, float(weight_decay), maximize)
    square_avg[...] = alpha * square_avg + (1 - alpha) * (g * g)
    var = square_avg
    if centered:
        grad_avg[...] = alpha * grad_avg + (1 - alpha) * g
        var = square_avg - grad_avg * grad_avg
    denom = np.sqrt(var) + eps
    if momentum != 0:
        momentum_buffer[...] = momentum * momentum_buffer + g / denom
        param[...] = param - lr * momentum_buffer
    else:
        param[...] = param - lr * (g / denom)


def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step,
         lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
         amsgrad=False, maximize=False, decoupled_weight_decay=False):
    lr, eps, weight_decay = float(lr), float(eps), float(weight_decay)
    beta1, beta2 = float(betas[0]), float(betas[1])
    if decoupled_weight_decay:
        l2, decay = 0.0, decay_factor(lr, weight_decay)
    else:
        l2, decay = weight_decay, 1.0
    g = _start(param, grad, l2, maximize)
    p = param * decay
    exp_avg[...] = beta1 * exp_avg + (1 - beta1) * g
    exp_avg_sq[...] = beta2 * exp_avg_sq + (1 - beta2) * (g * g)
    v = exp_avg_sq
    if amsgrad:
        np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        v = max_exp_avg_sq
    denom = np.sqrt(v) * adam_inv_sqrt_bc2(beta2, step) + eps
    param[...] = p - adam_step_size(lr, beta1, step) * (exp_avg / denom)


def adagrad(param, grad, state_sum, *, step, lr=1e-2, lr_decay=0.0,
            weight_decay=0.0, eps=1e-10, maximize=False):
    eps = float(eps)
    clr = adagrad_clr(float(lr), float(lr_decay), step)
    g = _start(param, grad, float(weight_decay), maximize)
    state_sum[...] = state_sum + g * g
    param[...] = param - clr * (g / (np.sqrt(state_sum) + eps))
