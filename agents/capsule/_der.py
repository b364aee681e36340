"""A minimal DER reader: enough of X.690 to walk a PKCS#7 SignedData."""

from __future__ import annotations

from dataclasses import dataclass

from agents.capsule._errors import SignatureRejected

TAG_INTEGER = 0x02
TAG_OCTET_STRING = 0x04
TAG_OID = 0x06
TAG_SEQUENCE = 0x30
TAG_SET = 0x31


@dataclass(frozen=True)
class Element:
    """One DER element: its tag byte, and where its whole encoding and its content lie in `data`."""

    data: bytes
    tag: int
    start: int
    content_start: int
    end: int

    @property
    def content(self) -> bytes:
        return self.data[self.content_start:self.end]

    @property
    def encoding(self) -> bytes:
        return self.data[self.start:self.end]

    def children(self) -> list[Element]:
        """Decode the content of a constructed element as a run of elements."""
        items = []
        offset = self.content_start
        while offset < self.end:
            child = read_element(self.data, offset, self.end)
            items.append(child)
            offset = child.end
        return items


def read_element(data: bytes, offset: int = 0, limit: int | None = None) -> Element:
    """Read the element at `offset`; raise SignatureRejected if it overruns `limit`."""
    limit = len(data) if limit is None else limit
    if offset + 2 > limit:
        raise SignatureRejected(f"PKCS#7 DER truncated at byte {offset}")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise SignatureRejected(f"PKCS#7 DER uses a multi-byte tag at byte {offset}")
    first = data[offset + 1]
    content_start = offset + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or content_start + count > limit:
            raise SignatureRejected(f"PKCS#7 DER has an invalid length field at byte {offset}")
        length = int.from_bytes(data[content_start:content_start + count], "big")
        content_start += count
    end = content_start + length
    if end > limit:
        raise SignatureRejected(
            f"PKCS#7 DER element at byte {offset} claims {length} bytes, past the end at {limit}"
        )
    return Element(data, tag, offset, content_start, end)


def expect(element: Element, tag: int, what: str) -> Element:
    if element.tag != tag:
        raise SignatureRejected(f"PKCS#7 {what}: expected DER tag {tag:#04x}, found {element.tag:#04x}")
    return element


def encode_oid(dotted: str) -> bytes:
    """Encode an object identifier's content octets (without tag and length)."""
    arcs = [int(part) for part in dotted.split(".")]
    out = bytearray([arcs[0] * 40 + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out.extend(reversed(chunk))
    return bytes(out)
