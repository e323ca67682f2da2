"""Optimizer checkpoints: one .npz file, written atomically, with a checksum.

The file is an ``np.savez`` archive (uncompressed, no pickles) with

- ``meta``: UTF-8 JSON of the state_dict without its arrays: format,
  version, optimizer, param_groups, skipped_steps and ``steps`` (index ->
  step count);
- ``state/<index>/<kind>``: one array per state of a parameter;

and, as the zip comment (the last 64 bytes of the file), the hex SHA-256 of
every byte before it.  The digest covers the whole file, zip headers
included, so any flipped bit or truncation is caught before the archive is
parsed.

A write goes to a temporary file in the target's folder, is flushed and
fsync'ed, replaces the target with ``os.replace`` and then the folder is
fsync'ed, so a crash leaves either the old file or the new one.  A read
checks the checksum, the format and the version before the optimizer checks
the content; every failure is a ValueError naming the file.
"""
import contextlib
import hashlib
import io
import json
import numbers
import os
import secrets
import zipfile

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Union

import numpy as np

__all__ = ["save", "load", "write_state", "read_state"]

if TYPE_CHECKING:
    from fastopt.optim import Optimizer

#: a file system path, as open() takes it
PathArg = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]

FORMAT = "fastopt"
VERSION = 1


def save(optimizer: "Optimizer", path: PathArg) -> None:
    """Write ``optimizer.state_dict()`` to ``path`` atomically."""
    write_state(path, optimizer.state_dict())


def load(optimizer: "Optimizer", path: PathArg) -> None:
    """Restore ``optimizer`` from a file written by :func:`save`."""
    path = _path(path)
    state_dict = read_state(path)
    try:
        optimizer.load_state_dict(state_dict)
    except ValueError as e:
        raise ValueError(f"{os.fsdecode(path)}: {e}") from e


def _path(path: Any) -> str:
    """A str, bytes or os.PathLike path as str (file names in messages and
    temporary names are text)."""
    try:
        return os.fsdecode(path)
    except TypeError:
        raise TypeError(f"path must be a str, bytes or os.PathLike, got "
                        f"{type(path).__name__}") from None


def _json_default(x):
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, numbers.Integral):
        return int(x)
    if isinstance(x, numbers.Real):
        return float(x)
    raise TypeError(f"cannot store {type(x).__name__} {x!r} in a checkpoint")


# The end-of-central-directory record closes every zip: signature, 16 bytes
# of fields, then the comment length (2 bytes, little endian) and comment.
_EOCD = b"PK\x05\x06"
_EOCD_SIZE = 22
_DIGEST_SIZE = 64


def _seal(data):
    """Give a zip without comment a comment holding the SHA-256 of the rest."""
    if data[-_EOCD_SIZE:-_EOCD_SIZE + 4] != _EOCD or data[-2:] != b"\0\0":
        raise RuntimeError("np.savez wrote an unexpected zip ending")
    data = data[:-2] + _DIGEST_SIZE.to_bytes(2, "little")
    return data + hashlib.sha256(data).hexdigest().encode()


def _verify(data, path):
    """Raise ValueError unless data ends with the digest of what precedes it."""
    end = len(data) - _DIGEST_SIZE
    if (end < _EOCD_SIZE or data[end - _EOCD_SIZE:end - _EOCD_SIZE + 4] != _EOCD
            or data[end - 2:end] != _DIGEST_SIZE.to_bytes(2, "little")):
        raise ValueError(f"{path}: not a fastopt checkpoint, or truncated "
                         f"(no checksum at its end)")
    if hashlib.sha256(memoryview(data)[:end]).hexdigest().encode() != data[end:]:
        raise ValueError(f"{path}: checksum mismatch; the file is damaged")


def _is_int(x):
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def _check_layout(sd):
    """Raise TypeError or ValueError unless sd has the layout of
    Optimizer.state_dict(): what a checkpoint stores and gives back."""
    if not isinstance(sd, dict):
        raise TypeError(f"state_dict must be a dict, got {type(sd).__name__}")
    if sd.get("format") != FORMAT or sd.get("version") != VERSION:
        raise ValueError(f"state_dict must have format {FORMAT!r} and version "
                         f"{VERSION}, got {sd.get('format')!r} and "
                         f"{sd.get('version')!r}")
    if not all(isinstance(k, str) for k in sd):
        raise ValueError("state_dict keys must be strings")
    state, groups = sd.get("state"), sd.get("param_groups")
    if not isinstance(state, dict):
        raise ValueError(f"state_dict['state'] must be a dict, got "
                         f"{type(state).__name__}")
    if not isinstance(groups, list) or not all(
            isinstance(g, dict) and all(isinstance(k, str) for k in g) for g in groups):
        raise ValueError("state_dict['param_groups'] must be a list of dicts "
                         "with string keys")
    skipped = sd.get("skipped_steps", 0)
    if not _is_int(skipped) or skipped < 0:
        raise ValueError(f"state_dict['skipped_steps'] must be an int >= 0, "
                         f"got {skipped!r}")
    for i, entry in state.items():
        where = f"state_dict['state'][{i!r}]"
        if not _is_int(i) or i < 0:
            raise ValueError(f"state_dict['state'] keys must be ints >= 0, got {i!r}")
        if not isinstance(entry, dict) or not _is_int(entry.get("step")) \
                or entry["step"] < 0:
            raise ValueError(f"{where} must be a dict with an int 'step' >= 0")
        for kind, value in entry.items():
            if kind == "step":
                continue
            if not isinstance(kind, str) or not kind or "/" in kind:
                raise ValueError(f"{where} has a state name that cannot be "
                                 f"stored: {kind!r}")
            if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
                raise ValueError(f"{where}[{kind!r}] must be a numeric numpy "
                                 f"array, got {getattr(value, 'dtype', type(value).__name__)}")


def check_state_dict(optimizer: Any, sd: Any) -> tuple[Any, Any, Any, Any]:
    """Check ``sd`` against ``optimizer`` (its class, groups, parameters and
    rule) before ``load_state_dict`` changes anything; return
    (hyperparameters per group, step per parameter, states per parameter,
    skipped_steps), or raise ValueError."""
    keys = optimizer.rule.state_keys
    if not isinstance(sd, dict):
        raise ValueError(f"state_dict must be a dict, got {type(sd).__name__}")
    if sd.get("format") != FORMAT:
        raise ValueError(f"not a fastopt state_dict (format {sd.get('format')!r})")
    if sd.get("version") != VERSION:
        raise ValueError(f"unsupported state_dict version {sd.get('version')!r}; "
                         f"this fastopt reads version {VERSION}")
    if sd.get("optimizer") != type(optimizer).__name__:
        raise ValueError(f"state_dict is for optimizer {sd.get('optimizer')!r}, "
                         f"not {type(optimizer).__name__}")
    skipped = sd.get("skipped_steps")
    if (isinstance(skipped, (bool, np.bool_))
            or not isinstance(skipped, numbers.Integral) or skipped < 0):
        raise ValueError(f"skipped_steps must be an int >= 0, got {skipped!r}")
    saved_groups, state = sd.get("param_groups"), sd.get("state")
    if not isinstance(saved_groups, list) or not isinstance(state, dict):
        raise ValueError("state_dict needs a list 'param_groups' and a dict 'state'")
    if len(saved_groups) != len(optimizer.param_groups):
        raise ValueError(f"state_dict has {len(saved_groups)} parameter groups, "
                         f"the optimizer {len(optimizer.param_groups)}")
    position: dict[Any, int] = {}
    hypers = []
    for k, (saved, group) in enumerate(zip(saved_groups, optimizer.param_groups)):
        where = f"param_groups[{k}]"
        if not isinstance(saved, dict) or not isinstance(saved.get("params"), list):
            raise ValueError(f"{where} must be a dict with a list 'params'")
        indices = saved["params"]
        if len(indices) != len(group["params"]):
            raise ValueError(f"{where} has {len(indices)} parameters, the "
                             f"optimizer's group {len(group['params'])}")
        if "param_names" in saved and "param_names" in group and (
                not isinstance(saved["param_names"], (list, tuple))
                or list(saved["param_names"]) != group["param_names"]):
            raise ValueError(f"{where} names parameters {saved['param_names']!r}, "
                             f"the optimizer's group {group['param_names']}")
        offset = len(position)
        for j, i in enumerate(indices):
            if (isinstance(i, (bool, np.bool_)) or not isinstance(i, numbers.Integral)
                    or i in position):
                raise ValueError(f"{where}['params'] must hold distinct int "
                                 f"indices, got {i!r}")
            position[i] = offset + j
        hyper = {k: v for k, v in saved.items() if k not in ("params", "param_names")}
        for spec in optimizer.rule.hypers:
            if spec.late and spec.name in optimizer.defaults and spec.name not in hyper:
                hyper[spec.name] = spec.default
        missing = [name for name in optimizer.defaults if name not in hyper]
        if missing:
            raise ValueError(f"{where} lacks hyperparameters {missing}")
        try:
            optimizer._check_group(hyper)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from e
        hypers.append(hyper)
    saved_dtype = sd.get("state_dtype")
    mine = getattr(optimizer, "state_dtype", None)
    bf16 = mine == "bfloat16"
    q8 = mine == "8bit"
    if saved_dtype != mine and (saved_dtype in ("bfloat16", "8bit")
                                or mine in ("bfloat16", "8bit")):
        raise ValueError(f"state_dict holds states of state_dtype={saved_dtype!r}, "
                         f"the optimizer keeps state_dtype={mine!r}; convert it "
                         f"with fastopt.states.convert_state_dict")
    if bf16 or q8:
        seed: Any = sd.get("seed")
        if not (_is_int(seed) and 0 <= seed < 2 ** 64):
            raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
    steps = [0] * len(optimizer._params)
    entries: list[dict[str, Any]] = [{} for _ in optimizer._params]
    for i, entry in state.items():
        where = f"state[{i!r}]"
        if isinstance(i, (bool, np.bool_)) or i not in position:
            raise ValueError(f"{where} is not a parameter index of the state_dict")
        pos = position[i]
        param, label = optimizer._params[pos], optimizer._labels[pos]
        if not isinstance(entry, dict) or "step" not in entry:
            raise ValueError(f"{where} must be a dict with a 'step'")
        step = entry["step"]
        if not _is_int(step):
            raise ValueError(f"{where}: step must be an int, got {type(step).__name__}")
        if not 0 <= step < 2 ** 62:
            raise ValueError(f"{where}: step must be >= 0 and < 2**62, got {step}")
        scalar_keys = optimizer.rule.scalar_keys
        extra = (["ema"] if optimizer.ema_decay is not None else []) + (
            ["grad_accum"] if optimizer.accumulation_steps > 1 else [])
        for kind, value in entry.items():
            if kind == "step":
                continue
            if kind in scalar_keys:
                entries[pos][kind] = _scalar_state(value, f"{where}[{kind!r}]")
                continue
            if kind == "ema" and "ema" not in extra:
                raise ValueError(f"{where} holds an average ('ema') but the "
                                 f"optimizer has ema_decay=None")
            if kind == "grad_accum" and "grad_accum" not in extra:
                raise ValueError(f"{where} holds accumulated gradients but the "
                                 f"optimizer has accumulation_steps=1")
            if q8 and kind.endswith(".scale") and kind[:-len(".scale")] in keys:
                # 8-bit states: the float32 scale of each block of 256
                nblocks = -(-param.size // 256)
                if (not isinstance(value, np.ndarray) or value.shape != (nblocks,)
                        or value.dtype != np.float32):
                    desc = _describe(value)
                    raise ValueError(f"{where}[{kind!r}] must be a float32 array of "
                                     f"shape ({nblocks},) (a scale per block of 256 "
                                     f"elements of parameter {label!r}), got {desc}")
                entries[pos][kind] = value
                continue
            if kind not in keys and kind not in extra:
                raise ValueError(f"{where} has an unknown state {kind!r}; "
                                 f"{type(optimizer).__name__} keeps "
                                 f"{list(keys) + list(scalar_keys) + extra}")
            # a state's shape follows the parameter's (State.shape: a
            # factored rule's row and column states, present by dimension)
            spec = next((s for s in optimizer.rule.states if s.state_key == kind), None)
            if spec is not None and not spec.present(np.ndim(param)):
                raise ValueError(f"{where} has state {kind!r}, which a parameter "
                                 f"of {np.ndim(param)} dimensions does not have")
            shape = param.shape if spec is None else spec.shape_for(param.shape)
            want = (np.dtype(np.uint16) if bf16 and kind in keys else
                    np.dtype(np.uint8) if q8 and kind in keys else param.dtype)
            if (not isinstance(value, np.ndarray) or value.shape != shape
                    or value.dtype != want):
                desc = _describe(value)
                raise ValueError(f"{where}[{kind!r}] must be a {want} array "
                                 f"of shape {shape} like parameter "
                                 f"{label!r}, got {desc}")
            entries[pos][kind] = value
        if entry["step"]:
            needed = [s.state_key for s in optimizer.rule.states
                      if s.when is None and s.present(np.ndim(param))
                      and s.state_key not in entries[pos]]
            needed += [k for k in scalar_keys if k not in entries[pos]]
            if q8:
                needed += [s.state_key + ".scale" for s in optimizer.rule.states
                           if s.when is None and s.state_key + ".scale" not in entries[pos]]
            if needed:
                raise ValueError(f"{where} lacks states {needed}")
        if q8:
            for key in keys:
                if (key in entries[pos]) != (key + ".scale" in entries[pos]):
                    raise ValueError(f"{where}: 8-bit state {key!r} needs both its "
                                     f"codes {key!r} and its scales {key + '.scale'!r}")
        steps[pos] = int(entry["step"])
    return hypers, steps, entries, int(skipped)


def check_accumulation(optimizer: Any, sd: Any) -> tuple[int, bool]:
    """The accumulated calls of ``sd`` (``sd["accumulation"]``), checked
    against ``optimizer``: (calls made in the window, a non-finite gradient
    seen in it), or ValueError."""
    acc = sd.get("accumulation")
    k = optimizer.accumulation_steps
    if acc is None:
        if any(isinstance(e, dict) and "grad_accum" in e for e in sd["state"].values()):
            raise ValueError("state_dict holds accumulated gradients but no "
                             "'accumulation' entry")
        return 0, False
    if k == 1:
        raise ValueError("state_dict holds an accumulation window but the "
                         "optimizer has accumulation_steps=1")
    if not isinstance(acc, dict) or set(acc) != {"steps", "count", "nonfinite"}:
        raise ValueError("state_dict['accumulation'] must be a dict with "
                         "'steps', 'count' and 'nonfinite'")
    count, nonfinite = acc["count"], acc["nonfinite"]
    if not _is_int(count) or not 0 <= count < k:
        raise ValueError(f"state_dict['accumulation']['count'] must be an int "
                         f"in [0, {k}) for accumulation_steps={k}, got {count!r}")
    if not isinstance(nonfinite, (bool, np.bool_)):
        raise ValueError(f"state_dict['accumulation']['nonfinite'] must be a "
                         f"bool, got {nonfinite!r}")
    return int(count), bool(nonfinite)


def _scalar_state(value, where):
    """A per-tensor scalar state of a state_dict: a real number or a 0-d (or
    one-element) real array, as a float."""
    if isinstance(value, np.ndarray) and value.size == 1 and value.ndim <= 1 \
            and value.dtype.kind in "iuf":
        return float(value.reshape(-1)[0])
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        try:
            return float(value)
        except OverflowError:   # an int past the float range
            raise ValueError(f"{where} is outside the float range: {value!r}") from None
    raise ValueError(f"{where} must be a real number or a 0-d array, got "
                     f"{getattr(value, 'dtype', type(value).__name__)}"
                     f"{getattr(value, 'shape', '')}")


def _encode(state_dict):
    """The checkpoint's bytes."""
    _check_layout(state_dict)
    meta = {k: v for k, v in state_dict.items() if k != "state"}
    meta["steps"] = {str(i): entry["step"] for i, entry in state_dict["state"].items()}
    arrays = {"meta": np.frombuffer(json.dumps(meta, default=_json_default)
                                    .encode(), dtype=np.uint8)}
    for i, entry in state_dict["state"].items():
        for kind, value in entry.items():
            if kind != "step":
                arrays[f"state/{i}/{kind}"] = value
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return _seal(buf.getvalue())


def write_state(path: PathArg, state_dict: Mapping[str, Any]) -> None:
    """Write a state_dict to ``path`` atomically (see the module docstring)."""
    path = _path(path)
    write_bytes(path, _encode(state_dict))


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same
    folder, flushed and fsync'ed, renamed over ``path``, the folder fsync'ed."""
    folder = os.path.dirname(os.path.abspath(path))
    _remove_stale_temporaries(path)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}."
                               f"{secrets.token_hex(8)}.tmp")
    # O_EXCL: never reuse a file; mode 0o666 lets the umask decide, as open() does.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                 | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if os.name == "posix":
        # The rename is durable only once the folder's entry is on disk.
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _remove_stale_temporaries(path):
    """Delete temporary files that writers of ``path`` left when killed.

    A temporary file is named ``.<name>.<pid>.<random>.tmp``; it is stale
    when no process has that pid any more (a live writer's file is kept)."""
    folder = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}."
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix):-len(".tmp")].split(".")[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(folder, name))


def _alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:       # exists, owned by someone else
        return True
    return True


def read_state(path: PathArg) -> dict[str, Any]:
    """Read and verify a checkpoint; return its state_dict."""
    path = _path(path)
    _remove_stale_temporaries(path)
    with open(path, "rb") as f:
        data = f.read()
    _verify(data, path)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: unreadable archive: {e}") from e
    if "meta" not in arrays:
        raise ValueError(f"{path}: not a fastopt checkpoint (no meta entry)")
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path}: unreadable metadata: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a fastopt checkpoint")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint version {meta.get('version')!r} "
                         f"is not supported; this fastopt reads version {VERSION}")
    steps = meta.pop("steps", None)
    if not isinstance(steps, dict) or not isinstance(meta.get("param_groups"), list):
        raise ValueError(f"{path}: metadata lacks steps or param_groups")
    try:
        state = {int(i): {"step": step} for i, step in steps.items()}
        for name, value in arrays.items():
            prefix, i, kind = name.split("/")
            if prefix != "state":
                raise ValueError(f"entry {name!r}")
            state[int(i)][kind] = value
    except (ValueError, KeyError) as e:
        raise ValueError(f"{path}: unexpected entry layout: {e}") from e
    for group in meta["param_groups"]:
        if isinstance(group, dict):
            for key, value in group.items():
                # JSON has no tuples; hyperparameter pairs (betas) are tuples.
                if key not in ("params", "param_names") and isinstance(value, list):
                    group[key] = tuple(value)
    meta["state"] = dict(sorted(state.items()))
    try:
        _check_layout(meta)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e
    return meta


def _describe(value):
    """A state value as messages name it."""
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__
