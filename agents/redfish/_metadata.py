"""The OData service document and the $metadata CSDL document for the resources served."""

from __future__ import annotations

from typing import Any

SCHEMA_BASE_URI = "http://redfish.dmtf.org/schemas/v1"

# Schema file -> namespaces it contributes, for each resource type the service returns.
# Versions are those of DMTF schema release 2025.4.
SCHEMAS: dict[str, tuple[str, ...]] = {
    "ServiceRoot": ("ServiceRoot", "ServiceRoot.v1_20_0"),
    "ComputerSystemCollection": ("ComputerSystemCollection",),
    "ComputerSystem": ("ComputerSystem", "ComputerSystem.v1_27_0"),
    "ChassisCollection": ("ChassisCollection",),
    "Chassis": ("Chassis", "Chassis.v1_28_0"),
    "ManagerCollection": ("ManagerCollection",),
    "Manager": ("Manager", "Manager.v1_24_0"),
    "SessionService": ("SessionService", "SessionService.v1_2_0"),
    "SessionCollection": ("SessionCollection",),
    "Session": ("Session", "Session.v1_8_0"),
    "AccountService": ("AccountService", "AccountService.v1_18_1"),
    "ManagerAccountCollection": ("ManagerAccountCollection",),
    "ManagerAccount": ("ManagerAccount", "ManagerAccount.v1_14_1"),
    "RoleCollection": ("RoleCollection",),
    "Role": ("Role", "Role.v1_3_3"),
    "UpdateService": ("UpdateService", "UpdateService.v1_17_0"),
    "SoftwareInventoryCollection": ("SoftwareInventoryCollection",),
    "SoftwareInventory": ("SoftwareInventory", "SoftwareInventory.v1_13_0"),
    "TaskService": ("TaskService", "TaskService.v1_3_0"),
    "TaskCollection": ("TaskCollection",),
    "Task": ("Task", "Task.v1_7_4"),
    "EventService": ("EventService", "EventService.v1_12_0"),
    "Event": ("Event", "Event.v1_13_0"),
    "Message": ("Message", "Message.v1_3_0"),
    "Resource": ("Resource", "Resource.v1_23_0"),
}

SERVICE_DOCUMENT_ENTRIES = (
    ("Service", "/redfish/v1/"),
    ("Systems", "/redfish/v1/Systems"),
    ("Chassis", "/redfish/v1/Chassis"),
    ("Managers", "/redfish/v1/Managers"),
    ("SessionService", "/redfish/v1/SessionService"),
    ("Sessions", "/redfish/v1/SessionService/Sessions"),
    ("AccountService", "/redfish/v1/AccountService"),
    ("UpdateService", "/redfish/v1/UpdateService"),
    ("TaskService", "/redfish/v1/TaskService"),
    ("EventService", "/redfish/v1/EventService"),
)


def metadata_xml() -> str:
    """Render $metadata: one Reference per schema served and the Service entity container."""
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<edmx:Edmx xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx" Version="4.0">',
    ]
    for schema, namespaces in SCHEMAS.items():
        lines.append(f'  <edmx:Reference Uri="{SCHEMA_BASE_URI}/{schema}_v1.xml">')
        lines.extend(f'    <edmx:Include Namespace="{namespace}"/>' for namespace in namespaces)
        lines.append("  </edmx:Reference>")
    lines += [
        f'  <edmx:Reference Uri="{SCHEMA_BASE_URI}/RedfishExtensions_v1.xml">',
        '    <edmx:Include Namespace="RedfishExtensions.v1_0_0" Alias="Redfish"/>',
        "  </edmx:Reference>",
        "  <edmx:DataServices>",
        '    <Schema xmlns="http://docs.oasis-open.org/odata/ns/edm" Namespace="Service">',
        '      <EntityContainer Name="Service" Extends="ServiceRoot.v1_20_0.ServiceContainer"/>',
        "    </Schema>",
        "  </edmx:DataServices>",
        "</edmx:Edmx>",
        "",
    ]
    return "\n".join(lines)


def service_document() -> dict[str, Any]:
    """Render the OData service document served at /redfish/v1/odata."""
    return {
        "@odata.context": "/redfish/v1/$metadata",
        "value": [{"name": name, "kind": "Singleton", "url": url}
                  for name, url in SERVICE_DOCUMENT_ENTRIES],
    }
