"""The project's one NinjaAPI. Every error answers with the same shape: {"detail": ...}."""

from django.core.exceptions import RequestDataTooBig
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, ValidationError

from runs.api.encoding import FastJSONRenderer
from runs.api.jobs import router as jobs_router
from runs.api.runs import router as runs_router
from runs.datasets.api import router as datasets_router
from runs.errors import ServiceError

api = NinjaAPI(
    renderer=FastJSONRenderer(),
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
api.add_router("/", jobs_router)
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
    # Only where, what and why: pydantic's `input` and `ctx` can echo a huge body or hold
    # values (inf, exceptions) that are not JSON.
    errors = [
        {
            "loc": [p if isinstance(p, int) else str(p) for p in error.get("loc", ())],
            "msg": str(error.get("msg", "")),
            "type": str(error.get("type", "")),
        }
        for error in exc.errors
    ]
    fields: dict[str, str] = {}
    for error in errors:
        fields.setdefault(_field_name(error["loc"]), error["msg"])
    return api.create_response(request, {"detail": errors, "fields": fields}, status=422)


def _field_name(loc: list) -> str:
    """("body", "payload", "learning_rate") -> "learning_rate"; ("query", "page") -> "page"."""
    parts = loc[1:]
    if loc and loc[0] == "body" and len(parts) > 1:
        parts = parts[1:]  # the name of the view's body argument
    return ".".join(str(p) for p in parts) or (str(loc[0]) if loc else "request")


@api.exception_handler(RequestDataTooBig)
def too_big(request, exc):
    return api.create_response(request, {"detail": "Request body too large."}, status=413)
