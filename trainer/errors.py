"""Errors raised by the trainer: one base class, so the CLI turns any of them into a clean exit."""


class TrainerError(Exception):
    """Base class for every error the trainer raises on purpose."""


class DataError(TrainerError):
    """Input data is missing or malformed. The message names the file and, where known, the line."""


class DownloadError(TrainerError):
    """A dataset download failed or did not match its published checksum."""


class PublishRefused(TrainerError):
    """A model produced something that must never reach the registry (e.g. non-finite scores)."""
