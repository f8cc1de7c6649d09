"""Pure checks of request bodies, beyond what the wire types already check."""

from __future__ import annotations

import re

from contracts.errors import BadRequest, TooLarge
from contracts.requests import MAX_CONTENT_CHARS, MAX_DOCUMENT_BYTES, Send

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_document_id(document_id: str) -> None:
    """A document id is any text without control characters (length is checked by the type)."""
    if CONTROL.search(document_id):
        raise BadRequest("documentId must not contain control characters")


def check_send(req: Send) -> None:
    """content is 1..32768 characters and not blank; documentXml at most 2 MiB of UTF-8."""
    if len(req.content) > MAX_CONTENT_CHARS:
        raise TooLarge(f"content is longer than {MAX_CONTENT_CHARS} characters")
    if not req.content.strip():
        raise BadRequest("content must not be blank")
    # A str of n code points is at most 4n UTF-8 bytes: encode only when it could be too large.
    if len(req.document_xml) * 4 > MAX_DOCUMENT_BYTES and len(req.document_xml.encode("utf-8", "surrogatepass")) > MAX_DOCUMENT_BYTES:
        raise TooLarge("documentXml is larger than 2 MiB")
