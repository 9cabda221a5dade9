"""`manage.py runserver` with TCP_NODELAY on every connection.

Django's development server writes an answer in several small pieces (status line, headers,
body). With Nagle's algorithm on, a piece written while the previous one is unacknowledged
waits for the client's delayed ACK, about 40 ms on Linux: every answer on a kept-alive
connection (browsers' htmx polls, scripts) took 40+ ms, however fast the view. With
TCP_NODELAY each piece leaves at once.

This app is listed before whitenoise's `runserver_nostatic` in INSTALLED_APPS, so this
command wraps that one (which in turn wraps staticfiles'): nothing else changes.
"""

from __future__ import annotations

import socket

from django.core.servers.basehttp import WSGIServer
from whitenoise.runserver_nostatic.management.commands.runserver import (
    Command as RunserverCommand,
)


class NoDelayWSGIServer(WSGIServer):
    def get_request(self):
        connection, address = super().get_request()
        if connection.family in (socket.AF_INET, socket.AF_INET6):
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection, address


class Command(RunserverCommand):
    server_cls = NoDelayWSGIServer
