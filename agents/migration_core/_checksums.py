"""Page checksums: XXH3-128 of each 4 KiB page, and digests over them.

The checksums catch pages that differ between source and destination after a
copy, not tampering, so a fast non-cryptographic hash fits: XXH3-128 hashes a
page in a fraction of a microsecond where BLAKE2b takes several. A digest
over the checksums of a whole VM is BLAKE2b-256.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import xxhash

from ._memory import ZERO_PAGE

CHECKSUM_BYTES = 16
page_checksum = xxhash.xxh3_128_digest
ZERO_PAGE_CHECKSUM = page_checksum(ZERO_PAGE)
# Stands for a page left out of a digest, and for a page a table has not recorded.
NO_CHECKSUM = bytes(CHECKSUM_BYTES)


def digest_checksums(checksums: Iterable[bytes]) -> str:
    """BLAKE2b-256, as hex, over one checksum per page in page order (NO_CHECKSUM for a page left out)."""
    digest = hashlib.blake2b(digest_size=32)
    for checksum in checksums:
        digest.update(checksum)
    return digest.hexdigest()
