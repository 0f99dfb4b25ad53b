"""Typed errors. Every user-facing failure is a WanrtError: the CLI prints its message as one line on stderr
and exits with its exit_code (2 for bad input), leaving nothing half-written."""


class WanrtError(Exception):
    """Base class: a failure explained in one line."""

    exit_code = 2


class BadInputError(WanrtError):
    """The user gave something wanrt cannot use (file, shape, option)."""


class LoraError(BadInputError):
    """A LoRA file or synthetic LoRA request that does not fit the model."""


class ModelSourceError(BadInputError):
    """A --model that cannot be loaded (unknown preset, missing checkpoint, offline hub id)."""


class ValidationError(WanrtError):
    """An exported artifact does not match its PyTorch reference; subclasses name the failing tier."""

    exit_code = 1
    tier = "values"


class NamesMismatch(ValidationError):
    tier = "names"


class AxesMismatch(ValidationError):
    tier = "axes"


class ShapeMismatch(ValidationError):
    tier = "shapes"


class ValuesMismatch(ValidationError):
    tier = "values"


class MissingDependencyError(WanrtError):
    """An optional component is not installed; the message names what to install."""

    exit_code = 3


class EngineError(WanrtError):
    """A TensorRT engine cannot be built, loaded or refit as asked."""
