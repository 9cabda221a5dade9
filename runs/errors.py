"""The one application error type. Services raise it; the API and pages render it."""


class ServiceError(Exception):
    status_code = 400

    def __init__(self, message: str, *, fields: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}


class InvalidInput(ServiceError):
    status_code = 422


class NotFound(ServiceError):
    status_code = 404


class Forbidden(ServiceError):
    status_code = 403


class Conflict(ServiceError):
    status_code = 409


class LimitExceeded(ServiceError):
    status_code = 429


class TunixUnavailable(ServiceError):
    status_code = 501


class PayloadTooLarge(ServiceError):
    status_code = 413
