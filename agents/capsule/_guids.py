"""GUIDs that identify capsule structures and update image types."""

from __future__ import annotations

import uuid

# EFI_FIRMWARE_MANAGEMENT_CAPSULE_ID_GUID (UEFI 2.10, section 23.3).
FMP_CAPSULE_GUID = uuid.UUID("6DCBD5ED-E82D-4C44-BDA1-7194199AD92A")

# EFI_CERT_TYPE_PKCS7_GUID: WIN_CERTIFICATE_UEFI_GUID.CertType for a DER PKCS#7 SignedData.
PKCS7_CERT_TYPE_GUID = uuid.UUID("4AAFD29D-68DF-49EE-8AA9-347D375665A7")

# UpdateImageTypeId that dcfleet assigns to a DPU management OS image. It was generated once
# with uuid4 for dcfleet and matches no vendor's GUID.
DPU_MGMT_OS_IMAGE_TYPE_ID = uuid.UUID("31909A36-E2B5-456C-BE1B-9478635662EE")
