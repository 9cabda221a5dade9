"""The upload handler that holds every request's file parts to the dataset size limit.

Django applies DATA_UPLOAD_MAX_MEMORY_SIZE to form fields only; file parts are spooled to a
temporary file however large they are. This handler runs first in FILE_UPLOAD_HANDLERS:
it refuses a request whose declared length cannot fit before reading any of it, and stops
one whose file parts grow past the limit while they stream, deleting what was spooled.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.files.uploadhandler import FileUploadHandler

from runs.errors import PayloadTooLarge
from runs.formatting import human_bytes

# Room in a request beside the file itself: the form fields (bounded by
# DATA_UPLOAD_MAX_MEMORY_SIZE) and multipart boundaries and headers.
_ENVELOPE_BYTES = 64 * 1024


class UploadTooLarge(PayloadTooLarge, RequestDataTooBig):
    """413 in the API and on pages; a SuspiciousOperation (400, not 500) anywhere that does
    not catch it."""


def too_large_error() -> UploadTooLarge:
    limit = settings.DATASET_MAX_BYTES
    return UploadTooLarge(
        f"The file is larger than the upload limit of {human_bytes(limit)}.",
        fields={"file": f"Larger than the limit of {human_bytes(limit)}."},
    )


class SizeLimitUploadHandler(FileUploadHandler):
    def __init__(self, request=None):
        super().__init__(request)
        self.received = 0

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        allowed = settings.DATASET_MAX_BYTES + _ENVELOPE_BYTES
        if settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            allowed += settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if content_length > allowed:
            raise too_large_error()
        return None

    def receive_data_chunk(self, raw_data, start):
        # Counted over all file parts of the request, so two halves do not pass either.
        self.received += len(raw_data)
        if self.received > settings.DATASET_MAX_BYTES:
            self._discard_spooled()
            raise too_large_error()
        return raw_data

    def file_complete(self, file_size):
        return None

    def _discard_spooled(self) -> None:
        # The next handler has been writing this part to a temporary file; close it now
        # (which deletes it) rather than when the request is garbage collected.
        for handler in self.request.upload_handlers if self.request else ():
            spooled = getattr(handler, "file", None)
            if handler is not self and spooled is not None:
                spooled.close()
