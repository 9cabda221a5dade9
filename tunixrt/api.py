"""The project's one NinjaAPI. Every error answers with the same shape: {"detail": ...}."""

from django.core.exceptions import RequestDataTooBig
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, ValidationError

from runs.api import router as runs_router
from runs.dataset_api import router as datasets_router
from runs.errors import ServiceError

api = NinjaAPI(
    title="tunix-rt API",
    version="1",
    description=(
        "Create, follow and manage Tunix post-training runs. Authenticate with "
        "`Authorization: Bearer <token>` (create one with `manage.py create_api_token`) "
        "or a browser session with CSRF."
    ),
    urls_namespace="api",
)
api.add_router("/", runs_router)
api.add_router("/datasets", datasets_router)


@api.exception_handler(ServiceError)
def service_error(request, exc: ServiceError):
    body = {"detail": exc.message}
    if exc.fields:
        body["fields"] = exc.fields
    return api.create_response(request, body, status=exc.status_code)


@api.exception_handler(AuthenticationError)
def authentication_error(request, exc):
    return api.create_response(request, {"detail": "Authentication required."}, status=401)


@api.exception_handler(ValidationError)
def validation_error(request, exc: ValidationError):
    return api.create_response(request, {"detail": exc.errors}, status=422)


@api.exception_handler(RequestDataTooBig)
def too_big(request, exc):
    return api.create_response(request, {"detail": "Request body too large."}, status=413)
