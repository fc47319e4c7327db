"""Errors of the storage and registry layer."""


class RegistryError(Exception):
    """Base class for every error this package raises on purpose."""


class StorageError(RegistryError):
    """The store could not be reached or refused an operation."""


class BlobNotFound(StorageError):
    """No object under that key."""


class InvalidStoreURI(StorageError):
    """A store URI we cannot use (scheme, missing bucket): the caller's mistake, not an outage."""


class InvalidKey(RegistryError):
    """A key that could escape the store's root or is otherwise unusable."""


class InvalidVersion(RegistryError):
    """A version string that is not `vMAJOR.MINOR`."""


class ReleaseNotFound(RegistryError):
    """No complete release (one with a manifest) under that version."""


class ReleaseCorrupt(RegistryError):
    """A release whose files do not match the hashes recorded when it was published."""


class ReleaseMalformed(ReleaseCorrupt):
    """A release whose hashes match but whose structure the registry relies on is unusable
    (a meta.json that is not a JSON object, `files` that is not a name -> sha256 map)."""


class Conflict(RegistryError):
    """Another writer changed the control plane since the caller read it: nothing was written.

    `current` is the newest record of that stream (a `control.Record`), or None.
    """

    def __init__(self, message: str, current=None) -> None:
        super().__init__(message)
        self.current = current


class InvalidControl(RegistryError):
    """A control-plane change that is not valid (unknown arm, bad weights, no release to use)."""
