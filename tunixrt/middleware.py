"""Errors that Django or Ninja render by themselves under /api/ (an unknown path, a method
the path does not take, an unhandled exception's 500 page) get the API's one JSON shape."""

from django.http import JsonResponse

API_PREFIX = "/api/"
# Headers of an error answer that a client still needs (Allow on 405, Retry-After on 429).
_KEEP_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")


class ApiErrorShapeMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if (
            response.status_code >= 400
            and request.path.startswith(API_PREFIX)
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            shaped = JsonResponse({"detail": response.reason_phrase}, status=response.status_code)
            for header in _KEEP_HEADERS:
                if header in response:
                    shaped[header] = response[header]
            return shaped
        return response
