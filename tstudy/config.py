"""RunConfig: everything that defines one training run's science, and its identity.

A run's id is a short hash of its canonical JSON: sorted keys, floats normalised, and only the
fields that differ from their defaults (so adding a field with a default never changes old ids).
Paths and machine settings (device, data root, output root) are not part of a RunConfig.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping
from functools import cached_property
from typing import Any, ClassVar, Union

from tstudy.errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("step", "cosine", "constant")
PRECISIONS = ("fp32", "bf16")
AUGMENTS = ("none", "crop_flip", "rrc_flip")
# Datasets read from a packed JPEG store and decoded while training (tstudy.stream_data): they
# always stream, and "rrc_flip" (random-resized-crop + flip) is their augmentation.
STREAMED_DATASETS = ("imagenet",)
LABELS = ("fine", "coarse")


def is_streamed(dataset: str, augment: str | None) -> bool:
    """Whether runs on this data train on the streamed path (``tstudy.stream_data``): the
    augmentation decides (``rrc_flip``), and ``STREAMED_DATASETS`` always stream."""
    return dataset in STREAMED_DATASETS or augment == "rrc_flip"
# Fields that define the data a run trains on; a trained teacher must share them with its students.
# ``val_fraction`` is one: the validation images are held out from everything that shapes a student,
# its teacher included (a teacher trained on them would carry them into the student's soft targets);
# ``train_per_class`` too (a teacher trained on more images than its students is another study).
DATA_FIELDS = ("dataset", "labels", "image_size", "val_fraction", "train_per_class")
# Fields that fix a run's initial weights (architecture, classes, input, init, seed) and the batches
# it sees (training set, augmentation, batch size, seed: each epoch's order and augmentation are
# drawn from (seed, epoch)). Runs equal in them are *paired*, whatever their loss side (method,
# temperature, parameters), teacher, optimizer, schedule, precision or duration (a shorter run's
# batches are the first epochs of a longer one's). ``RunConfig.pair_id`` hashes them.
PAIR_FIELDS = DATA_FIELDS + ("augment", "batch_size", "model", "init", "seed")
ID_LENGTH = 16
# Upper bounds: far beyond any real study, so a larger value is a typo (or cannot be computed).
MAX_TEMPERATURE = 1000.0  # above it the softened softmax is uniform to float32 precision
MAX_EPOCHS = 100_000  # the usual KD schedule is 240 epochs, the longest published ~10,000
MAX_TRAIN_PER_CLASS = 10_000_000  # more images than any class of any dataset has
MAX_BATCH_SIZE = 65_536  # the largest batches of the large-batch literature (64k)
MAX_IMAGE_SIZE = 1024  # the training set is held in memory as uint8 at this size
MAX_SEED = 2**63 - 1  # torch seeds are 64-bit integers
# A validation split larger than half the training set would train on less than it holds out (a
# typo, e.g. 10 for 10 %); at most half also leaves every class of 2+ images one to train on.
MAX_VAL_FRACTION = 0.5


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _short_hash(obj: Any) -> str:
    return hashlib.sha256(_canonical_json(obj).encode()).hexdigest()[:ID_LENGTH]


def _jsonable(value: Any) -> Any:
    """Normalise a value for canonical JSON (tuples -> lists, ints stay ints, floats stay floats)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"non-finite value {value!r} cannot be part of a run config")
        return value + 0.0  # -0.0 -> 0.0: one spelling, one id
    if isinstance(value, (RunConfig, TeacherFile, WeightsFile)):
        return value.canonical()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in sorted(value.items())}
    return value


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class WeightsFile:
    """A weights file on disk, identified by its content hash (the path is not part of the id)."""

    path: str
    sha256: str = ""

    def __post_init__(self) -> None:
        p = Path(self.path).expanduser()
        if not self.sha256:
            if not p.is_file():
                raise ConfigError(f"weights file: {self.path!r} does not exist")
            object.__setattr__(self, "sha256", file_sha256(p))
        object.__setattr__(self, "path", str(p))

    def canonical(self) -> dict:
        return {"kind": "file", "sha256": self.sha256}


@dataclass(frozen=True)
class TeacherFile:
    """An external teacher: architecture name + checkpoint file (plain or {"model": ...} state_dict)."""

    model: str
    weights: WeightsFile

    def __post_init__(self) -> None:
        from tstudy.catalog import check_model

        check_model(self.model, "teacher.model")
        if isinstance(self.weights, (str, os.PathLike)):
            object.__setattr__(self, "weights", WeightsFile(str(self.weights)))

    def canonical(self) -> dict:
        return {"kind": "external", "model": self.model, "weights": self.weights.canonical()}

    @property
    def run_id(self) -> str:
        return "ext-" + self.weights.sha256[:ID_LENGTH - 4]


Init = Union[None, str, WeightsFile]  # None/"scratch", "imagenet", or a WeightsFile


@dataclass(frozen=True)
class RunConfig:
    """One training run: data, network, teacher, loss (method + temperature), optimisation, seed.

    ``teacher`` is another RunConfig (a teacher trained by tstudy, method ``ce``), a
    :class:`TeacherFile`, or None. ``temperature`` is ONE field for every method; each method's
    docstring says what it means, and methods that do not use it store ``None``.
    ``milestones`` are epochs, or fractions of ``epochs`` when all lie in (0, 1); an integral
    value is stored as an int (150.0 -> 150), so both spellings are one run.
    ``eval_epochs`` are evaluated in addition to the last epoch, which always is.
    ``val_fraction`` of each class's training images are held out as a validation split
    (``tstudy.data.validation``: the same images for every seed), evaluated with the test set.
    ``train_per_class`` keeps only the first N training images of each class, in the dataset's
    order, before the validation split (``tstudy.data.validation.training_subset``; None: all).
    """

    dataset: str = "digits"
    labels: str = "fine"
    image_size: int | None = None
    model: str = "cnn_s"
    init: Init = None
    teacher: "RunConfig | TeacherFile | None" = None
    method: str = "ce"
    method_params: Any = field(default_factory=dict)
    temperature: float | None = 4.0
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "step"
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    warmup_epochs: int = 0
    batch_size: int = 64
    epochs: int = 240
    eval_epochs: tuple[int, ...] = ()
    seed: int = 0
    precision: str = "fp32"
    augment: str | None = None
    val_fraction: float = 0.0
    train_per_class: int | None = None

    _FLOATS: ClassVar[tuple[str, ...]] = ("temperature", "lr", "momentum", "weight_decay", "gamma", "val_fraction")
    _INTS: ClassVar[tuple[str, ...]] = ("image_size", "warmup_epochs", "batch_size", "epochs", "seed",
                                        "train_per_class")
    _OPTIONAL_INTS: ClassVar[tuple[str, ...]] = ("image_size", "train_per_class")

    # ----------------------------------------------------------------- construction
    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        for name in self._FLOATS:
            v = getattr(self, name)
            if isinstance(v, bool) or (v is not None and not isinstance(v, (int, float))):
                raise ConfigError(f"{name}: expected a number, got {v!r}")
            if v is not None:
                set_(name, float(v))
        for name in self._INTS:
            v = getattr(self, name)
            if v is None and name in self._OPTIONAL_INTS:
                continue
            set_(name, _as_int(name, v))
        if not isinstance(self.nesterov, bool):
            raise ConfigError(f"nesterov: expected True or False, got {self.nesterov!r}")
        for name in ("milestones", "eval_epochs"):
            v = getattr(self, name)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                v = (v,)
            if isinstance(v, (str, bytes)) or not isinstance(v, (tuple, list)):
                raise ConfigError(f"{name}: expected a list of numbers, got {v!r}")
            if name == "eval_epochs":
                v = [_as_int(name, e) for e in v]
            elif any(isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) for m in v):
                raise ConfigError(f"{name}: expected a list of numbers, got {v!r}")
            else:  # as eval_epochs: an integral float is the int (ints hash as they always did)
                v = [int(m) if float(m).is_integer() else float(m) for m in v]
            set_(name, tuple(sorted(dict.fromkeys(v))))
        if self.init == "scratch":
            set_("init", None)
        if isinstance(self.teacher, Mapping):
            try:
                set_("teacher", RunConfig.from_dict(self.teacher))
            except ConfigError as e:
                msg = str(e)
                raise ConfigError(f"teacher: {msg[8:]}" if msg.startswith("config: ") else f"teacher.{msg}") from None
        if not isinstance(self.method_params, Mapping):
            raise ConfigError(f"method_params: expected a dict, got {self.method_params!r}")
        # Identity: parameters in one form (validated values), entries equal to the defaults dropped.
        cls = self.method_class()
        given, defaults = cls.check_params(dict(self.method_params)), cls.check_params({})
        set_("method_params", _FrozenDict({k: given[k] for k in self.method_params if given[k] != defaults[k]}))
        self._validate()
        if not self.method_class().uses_temperature(dict(self.method_params)):
            set_("temperature", None)

    def method_class(self):
        """The method's class-level API (parameters, teacher/temperature use); no torch import."""
        from tstudy.method_specs import method_spec

        return method_spec(self.method)

    def _validate(self) -> None:
        from tstudy.catalog import check_dataset, check_model

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        def choice(name: str, allowed: tuple[str, ...]) -> None:
            v = getattr(self, name)
            need(v in allowed, f"{name}: unknown value {v!r}; valid: {', '.join(allowed)}")

        def finite(name: str, v: float | None) -> bool:
            return v is not None and math.isfinite(v)

        check_dataset(self.dataset, "dataset")
        check_model(self.model, "model")
        cls = self.method_class()
        choice("labels", LABELS)
        choice("optimizer", OPTIMIZERS)
        choice("schedule", SCHEDULES)
        choice("precision", PRECISIONS)
        need(self.augment is None or self.augment in AUGMENTS,
             f"augment: unknown value {self.augment!r}; valid: {', '.join(AUGMENTS)} (or None for the dataset's default)")
        need(self.augment != "rrc_flip" or self.dataset in STREAMED_DATASETS + ("imagefolder",),
             f"augment: 'rrc_flip' needs a dataset read from JPEG files (imagenet, imagefolder), not {self.dataset!r}")
        need(self.dataset not in STREAMED_DATASETS or self.augment in (None, "rrc_flip"),
             f"augment: {self.dataset} is streamed from JPEG files and trains with 'rrc_flip' (or None), "
             f"got {self.augment!r}")
        streamed = is_streamed(self.dataset, self.augment)
        need(not streamed or self.labels == "fine",
             f"labels: the streamed data path has the folders' classes only ('fine'), got {self.labels!r}")
        need(self.image_size is None or 4 <= self.image_size <= MAX_IMAGE_SIZE,
             f"image_size: must be in 4..{MAX_IMAGE_SIZE} (the training set is held in memory), got {self.image_size}")
        params = dict(self.method_params)
        if cls.uses_temperature(params):
            need(finite("temperature", self.temperature) and self.temperature > 0,
                 f"temperature: must be a finite number > 0, got {self.temperature!r}")
            need(self.temperature <= MAX_TEMPERATURE,
                 f"temperature: must be at most {MAX_TEMPERATURE:g} (above it the softened softmax is uniform "
                 f"to float32 precision), got {self.temperature:g}")
            cls.check_temperature(self.temperature, params)
        need(finite("lr", self.lr) and self.lr > 0, f"lr: must be a finite number > 0, got {self.lr!r}")
        need(finite("momentum", self.momentum) and 0 <= self.momentum < 1,
             f"momentum: must be in [0, 1), got {self.momentum!r}")
        need(finite("weight_decay", self.weight_decay) and self.weight_decay >= 0,
             f"weight_decay: must be >= 0, got {self.weight_decay!r}")
        need(finite("gamma", self.gamma) and 0 < self.gamma <= 1, f"gamma: must be in (0, 1], got {self.gamma!r}")
        need(not self.nesterov or (self.optimizer == "sgd" and self.momentum > 0),
             "nesterov: needs optimizer 'sgd' with momentum > 0")
        need(self.batch_size >= 1, f"batch_size: must be >= 1, got {self.batch_size}")
        need(self.batch_size <= MAX_BATCH_SIZE, f"batch_size: must be at most {MAX_BATCH_SIZE} (the largest "
             f"batches of the large-batch literature; a larger one is a typo), got {self.batch_size}")
        need(self.epochs >= 1, f"epochs: must be >= 1, got {self.epochs}")
        need(self.epochs <= MAX_EPOCHS, f"epochs: must be at most {MAX_EPOCHS} (KD schedules are 240 epochs, "
             f"the longest published ~10,000; a larger value is a typo), got {self.epochs}")
        need(0 <= self.warmup_epochs < self.epochs,
             f"warmup_epochs: must be in [0, epochs={self.epochs}), got {self.warmup_epochs}")
        need(self.train_per_class is None or 1 <= self.train_per_class <= MAX_TRAIN_PER_CLASS,
             f"train_per_class: must be None (every training image) or in 1..{MAX_TRAIN_PER_CLASS}, "
             f"got {self.train_per_class}")
        need(self.train_per_class is None or not streamed,
             "train_per_class: the streamed data path trains on every image of its store; "
             "build a store of the subset instead")
        need(finite("val_fraction", self.val_fraction) and 0 <= self.val_fraction <= MAX_VAL_FRACTION,
             f"val_fraction: expected a number in [0, {MAX_VAL_FRACTION:g}], got {self.val_fraction!r}")
        need(0 <= self.seed <= MAX_SEED, f"seed: must be in 0..2**63-1 (torch seeds are 64-bit), got {self.seed}")
        for e in self.eval_epochs:
            need(1 <= e <= self.epochs, f"eval_epochs: epoch {e} is outside 1..epochs={self.epochs}")
        if self.milestones:
            fractions = all(0 < m < 1 for m in self.milestones)
            need(fractions or all(float(m).is_integer() and 1 <= m < self.epochs for m in self.milestones),
                 f"milestones: must be epochs in 1..{self.epochs - 1} or fractions in (0, 1), got {list(self.milestones)}")
        need(self.init is None or self.init == "imagenet" or isinstance(self.init, WeightsFile),
             f"init: must be None/'scratch', 'imagenet' or a WeightsFile, got {self.init!r}")
        needs_teacher = cls.needs_teacher(params)
        if needs_teacher:
            need(self.teacher is not None, f"teacher: method {self.method!r} needs a teacher, none given")
        else:
            need(self.teacher is None, f"teacher: method {self.method!r} takes no teacher, but one was given")
        if needs_teacher and streamed:
            need(not cls.needs_teacher_train_logits(params),
                 f"method: {self.method!r} needs the teacher's logits on the whole training set, which the "
                 "streamed data path does not compute")
        if isinstance(self.teacher, RunConfig):
            t = self.teacher
            need(t.teacher is None, "teacher: a teacher run must not have a teacher of its own")
            need(is_streamed(t.dataset, t.augment) == streamed,
                 f"teacher.augment: {t.augment!r} puts the teacher on the "
                 f"{'streamed' if not streamed else 'in-memory'} data path and the student ({self.augment!r}) on "
                 f"the {'streamed' if streamed else 'in-memory'} one: their images would be prepared differently")
            for name in DATA_FIELDS:
                need(getattr(t, name) == getattr(self, name),
                     f"teacher.{name}: {getattr(t, name)!r} differs from the student's {getattr(self, name)!r}")
        else:
            need(self.teacher is None or isinstance(self.teacher, TeacherFile),
                 f"teacher: must be a RunConfig, a TeacherFile or None, got {type(self.teacher).__name__}")

    # ----------------------------------------------------------------- identity
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @cached_property
    def _canonical(self) -> dict:
        out = {}
        for name, default in _defaults_of(type(self)).items():
            v = getattr(self, name)
            if name == "temperature" and v is None:
                continue  # methods that ignore temperature
            j = _jsonable(v)
            if j != default:
                out[name] = j
        return out

    def canonical(self) -> dict:
        """The non-default fields, JSON-ready: the run's identity."""
        return dict(self._canonical)

    @cached_property
    def run_id(self) -> str:
        return _short_hash(self._canonical)

    @property
    def pair_id(self) -> str:
        """A short hash of the run's :data:`PAIR_FIELDS`: runs with equal ``pair_id`` start from
        identical weights and see identical batches (``tests/test_paired_design.py``)."""
        return _short_hash({k: v for k, v in self._canonical.items() if k in PAIR_FIELDS})

    def to_dict(self) -> dict:
        """All fields, JSON-ready (teacher nested), for config.json."""
        d = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, RunConfig):
                v = v.to_dict()
            elif isinstance(v, TeacherFile):
                v = {"kind": "external", "model": v.model, "path": v.weights.path, "sha256": v.weights.sha256}
            elif isinstance(v, WeightsFile):
                v = {"kind": "file", "path": v.path, "sha256": v.sha256}
            d[f.name] = _jsonable(v)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunConfig":
        """Inverse of :meth:`to_dict`; rejects unknown keys with the list of valid ones."""
        d = dict(d)
        check_fields(d, "config")
        t = d.get("teacher")
        if isinstance(t, Mapping):
            if t.get("kind") == "external":
                d["teacher"] = TeacherFile(t["model"], WeightsFile(t["path"], t["sha256"]))
            else:
                d["teacher"] = cls.from_dict(t)
        if isinstance(d.get("init"), Mapping):
            d["init"] = WeightsFile(d["init"]["path"], d["init"]["sha256"])
        return cls(**d)

    def replace(self, **changes: Any) -> "RunConfig":
        check_fields(changes, "config")
        return dataclasses.replace(self, **changes)

    def with_seed(self, seed: int) -> "RunConfig":
        """``replace(seed=seed)`` without validating the other fields again (no rule involves the
        seed but its own), for expanding a study's seeds; the same config and run id."""
        seed = _as_int("seed", seed)
        if seed < 0:
            raise ConfigError(f"seed: must be >= 0, got {seed}")
        canonical = {k: v for k, v in self._canonical.items() if k != "seed"}
        if seed != _defaults_of(type(self))["seed"]:
            canonical["seed"] = seed
        new = object.__new__(type(self))
        new.__dict__.update({k: v for k, v in self.__dict__.items() if k != "run_id"},
                            seed=seed, _canonical=canonical)
        return new

    # ----------------------------------------------------------------- derived
    @property
    def params(self) -> dict:
        return dict(self.method_params)

    def warnings(self) -> list[str]:
        """What makes little sense in this run without being invalid (e.g. DKD's 20-epoch warm-up
        in a 4-epoch run): one line each, shown by `plan` and written to the run log."""
        return self.method_class().epoch_warnings(dict(self.method_params), self.epochs)

    @property
    def eval_points(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.eval_epochs) | {self.epochs}))

    @property
    def milestone_epochs(self) -> tuple[int, ...]:
        if self.milestones and all(0 < m < 1 for m in self.milestones):
            return tuple(max(1, round(m * self.epochs)) for m in self.milestones)
        return tuple(int(m) for m in self.milestones)

    @property
    def teacher_id(self) -> str | None:
        return None if self.teacher is None else self.teacher.run_id

    @property
    def teacher_model(self) -> str | None:
        return None if self.teacher is None else self.teacher.model


@functools.lru_cache(maxsize=None)
def _defaults_of(cls: type) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out[f.name] = _jsonable(default)
    return out


def _as_int(name: str, v: Any) -> int:
    """An integer field's value (integral floats accepted), or a one-line ConfigError."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    raise ConfigError(f"{name}: expected an integer, got {v!r}")


def check_fields(keys: Mapping[str, Any] | list[str], where: str) -> None:
    """Reject keys that are not RunConfig fields, listing the valid ones."""
    valid = RunConfig.field_names()
    for k in keys:
        if k not in valid:
            raise ConfigError(f"{where}: unknown field {k!r}; valid: {', '.join(valid)}")


class _FrozenDict(dict):
    """An immutable, hashable dict for method_params."""

    def _readonly(self, *a: Any, **k: Any) -> None:
        raise TypeError("method_params is read-only; use RunConfig.replace(method_params=...)")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(_canonical_json(_jsonable(dict(self))))

    def __reduce__(self):  # pickling (submitit) must not go through the blocked __setitem__
        return (_FrozenDict, (dict(self),))
