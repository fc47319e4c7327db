"""Errors of the storage and registry layer."""


class RegistryError(Exception):
    """Base class for every error this package raises on purpose."""


class StorageError(RegistryError):
    """The store could not be reached or refused an operation."""


class BlobNotFound(StorageError):
    """No object under that key."""


class InvalidKey(RegistryError):
    """A key that could escape the store's root or is otherwise unusable."""


class InvalidVersion(RegistryError):
    """A version string that is not `vMAJOR.MINOR`."""


class ReleaseNotFound(RegistryError):
    """No complete release (one with a manifest) under that version."""


class ReleaseCorrupt(RegistryError):
    """A release whose files do not match the hashes recorded when it was published."""
