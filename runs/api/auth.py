"""API authentication: bearer tokens for scripts, the Django session (with CSRF) for pages."""

from ninja.security import HttpBearer, SessionAuth

from runs import services


class BearerTokenAuth(HttpBearer):
    def authenticate(self, request, token):
        user = services.api_token_authenticate(token=token)
        if user is not None:
            # Views and services read request.user whichever way the caller signed in.
            request.user = user
        return user


api_auth = [BearerTokenAuth(), SessionAuth(csrf=True)]
