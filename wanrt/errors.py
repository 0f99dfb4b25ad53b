"""Typed errors. Every user-facing failure is a WanrtError: the CLI prints its message as one line on stderr
and exits with its exit_code, leaving nothing half-written.

Exit codes (documented in the README): 0 success; 1 an exported artifact failed validation against its reference;
2 bad input (a file, option or path the user gave); 3 a missing optional dependency; 4 the machine or the network
stopped the work (disk full, read-only file system, permission denied, I/O error, hub unreachable); 130 SIGINT;
143 SIGTERM (temporaries removed first)."""


class WanrtError(Exception):
    """Base class: a failure explained in one line. `param` names the input it is about (an option, a field, a
    shape axis such as "frames"), for callers that report it apart from the text (the serving API's error.param)."""

    exit_code = 2

    def __init__(self, *args: object, param: str | None = None):
        super().__init__(*args)
        self.param = param


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


class StorageError(WanrtError):
    """The file system refused a write or read wanrt needed (ENOSPC, EROFS, EACCES, EIO): the input may be fine,
    the machine is not. Distinct exit code so scripts can retry elsewhere instead of fixing their arguments."""

    exit_code = 4


class NetworkError(WanrtError):
    """A remote (model hub, package index) could not be reached; nothing about the input is known to be wrong."""

    exit_code = 4


def os_error_line(e: OSError, action: str = "") -> str:
    """One line for an OSError: what wanrt was doing, the path, and the system's reason (no traceback)."""
    where = e.filename if getattr(e, "filename", None) else ""
    reason = e.strerror or str(e) or type(e).__name__
    parts = [p for p in (action, str(where) if where else "") if p]
    return f"{': '.join(parts)}: {reason}" if parts else reason


def first_line(e: BaseException) -> str:
    """A library's reason in one line: the first non-empty line of its message, without C++ source locations
    (OpenVINO's "Exception from src/...:" and "Check '...'" lines; decoders and pickle put several lines in one
    message too), at most 160 characters."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    said = [ln for ln in lines if not ln.startswith(("Exception from ", "Check '"))] or lines
    return (said[0] if said else type(e).__name__)[:160]
