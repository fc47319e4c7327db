"""Service errors carry their HTTP status and a stable code; one handler renders them as JSON."""


class ServiceError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotReady(ServiceError):
    status = 503
    code = "not_ready"


class UnknownModel(ServiceError):
    status = 404
    code = "unknown_model"


class ReleaseRefused(ServiceError):
    status = 409
    code = "release_refused"


class ReleaseInvalid(ReleaseRefused):
    """A release whose hashes match but whose contents break the format (schema, shapes, dtypes,
    non-finite scores). A kind of refusal: counted and handled wherever refusals are."""

    code = "release_invalid"


class ReleaseNotFound(ServiceError):
    status = 404
    code = "release_not_found"


class ReleaseNotLoaded(ServiceError):
    status = 404
    code = "release_not_loaded"


class InvalidRequest(ServiceError):
    status = 422
    code = "invalid_request"


class Unauthorized(ServiceError):
    status = 401
    code = "unauthorized"


class ConflictError(ServiceError):
    """The control plane moved on since the caller read it; nothing was written."""

    status = 409
    code = "conflict"
