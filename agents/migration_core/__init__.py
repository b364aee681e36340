"""Live migration that survives uncorrectable memory errors: the pure core.

Host frames with a memory error map, guest memory on those frames, an
error-safe read modelled on Linux `copy_mc_to_kernel()`, the precopy state
machine, page-record batches for the wire, and QEMU-named statistics. No
module here does I/O or reads a clock.
"""

from ._flow import AckOutOfRange, CreditWindow
from ._frames import ArenaFrameStore, FrameStore, SparseFrameStore
from ._guest import GuestMemory, PageKind, SafeRead
from ._memory import (
    PAGE_SIZE_BYTES,
    AllocatedPageMap,
    FrameError,
    FrameOutOfRange,
    GuestPageMap,
    GuestPageOutOfRange,
    HostMemory,
    MachineCheck,
    MemoryErrorMap,
    OutOfHostFrames,
)
from ._model import PrecopyPrediction, predict_precopy
from ._precopy import (
    Completed,
    PassReport,
    PrecopyConfig,
    PrecopyDestination,
    PrecopySource,
    SendPass,
    StopAndCopy,
    WrongMigrationState,
)
from ._simulate import SimulatedMigration, simulate_migration
from ._stats import MigrationStats
from ._checksums import NO_CHECKSUM, ZERO_PAGE_CHECKSUM, digest_checksums, page_checksum
from ._transfer import DEFAULT_RECORDS_PER_BATCH, AppliedBatch, EncodedBatch, PageChecksums, apply_batch, encode_pages
from ._wire import DATA_RECORD_SIZE_BYTES, WIRE_VERSION, MalformedPageBatch, PageRecord, decode_batch, encode_batch
from ._workload import GuestWorkload, WorkloadTick, page_content, populate

__all__ = [
    "DATA_RECORD_SIZE_BYTES",
    "DEFAULT_RECORDS_PER_BATCH",
    "NO_CHECKSUM",
    "PAGE_SIZE_BYTES",
    "WIRE_VERSION",
    "AckOutOfRange",
    "AllocatedPageMap",
    "AppliedBatch",
    "ArenaFrameStore",
    "Completed",
    "CreditWindow",
    "EncodedBatch",
    "FrameError",
    "FrameOutOfRange",
    "FrameStore",
    "GuestMemory",
    "GuestPageMap",
    "GuestPageOutOfRange",
    "GuestWorkload",
    "HostMemory",
    "MachineCheck",
    "MalformedPageBatch",
    "MemoryErrorMap",
    "MigrationStats",
    "OutOfHostFrames",
    "PageChecksums",
    "PageKind",
    "PageRecord",
    "PassReport",
    "PrecopyConfig",
    "PrecopyDestination",
    "PrecopyPrediction",
    "PrecopySource",
    "SafeRead",
    "SendPass",
    "SimulatedMigration",
    "SparseFrameStore",
    "StopAndCopy",
    "WorkloadTick",
    "WrongMigrationState",
    "ZERO_PAGE_CHECKSUM",
    "apply_batch",
    "decode_batch",
    "digest_checksums",
    "encode_batch",
    "encode_pages",
    "page_checksum",
    "page_content",
    "populate",
    "predict_precopy",
    "simulate_migration",
]
