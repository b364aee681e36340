"""Resource bodies built from the backend's state; no I/O beyond backend calls."""

from __future__ import annotations

from typing import Any

from agents.redfish._auth import (
    MAX_PASSWORD_LENGTH,
    MIN_PASSWORD_LENGTH,
    ROLE_PRIVILEGES,
    etag_of,
)
from agents.redfish._backend import RESET_TYPES, Dpu, HostSystem
from agents.redfish._errors import RedfishError
from agents.redfish._state import ServiceState
from agents.redfish._update import INVENTORY_URI, TRANSFER_PROTOCOLS

V1 = "/redfish/v1"


def ref(uri: str) -> dict[str, str]:
    return {"@odata.id": uri}


def collection(uri: str, odata_type: str, name: str, member_uris: list[str]) -> dict[str, Any]:
    return {
        "@odata.id": uri,
        "@odata.type": f"#{odata_type}.{odata_type}",
        "Name": name,
        "Members": [ref(member) for member in member_uris],
        "Members@odata.count": len(member_uris),
    }


def not_found(kind: str, name: str) -> RedfishError:
    return RedfishError(404, "Base.ResourceNotFound", kind, name)


def service_root(state: ServiceState) -> dict[str, Any]:
    return {
        "@odata.id": f"{V1}/",
        "@odata.type": "#ServiceRoot.v1_20_0.ServiceRoot",
        "Id": "RootService",
        "Name": "dcfleet BMC Redfish service",
        "RedfishVersion": "1.22.0",
        "UUID": state.service_uuid,
        "Systems": ref(f"{V1}/Systems"),
        "Chassis": ref(f"{V1}/Chassis"),
        "Managers": ref(f"{V1}/Managers"),
        "SessionService": ref(f"{V1}/SessionService"),
        "AccountService": ref(f"{V1}/AccountService"),
        "UpdateService": ref(f"{V1}/UpdateService"),
        "Tasks": ref(f"{V1}/TaskService"),
        "EventService": ref(f"{V1}/EventService"),
        "Links": {"Sessions": ref(f"{V1}/SessionService/Sessions")},
    }


async def systems(state: ServiceState) -> dict[str, Any]:
    host = await state.backend.host_system()
    dpus = await state.backend.list_dpus()
    members = [f"{V1}/Systems/{host.system_id}"] + [f"{V1}/Systems/{d.dpu_id}" for d in dpus]
    return collection(f"{V1}/Systems", "ComputerSystemCollection", "Computer systems", members)


async def system(state: ServiceState, system_id: str) -> dict[str, Any]:
    host = await state.backend.host_system()
    if system_id == host.system_id:
        return host_system(state, host)
    for dpu in await state.backend.list_dpus():
        if dpu.dpu_id == system_id:
            return dpu_system(state, dpu)
    raise not_found("ComputerSystem", system_id)


def host_system(state: ServiceState, host: HostSystem) -> dict[str, Any]:
    uri = f"{V1}/Systems/{host.system_id}"
    body: dict[str, Any] = {
        "@odata.id": uri,
        "@odata.type": "#ComputerSystem.v1_27_0.ComputerSystem",
        "Id": host.system_id,
        "Name": host.name,
        "SystemType": "Physical",
        "Manufacturer": host.manufacturer,
        "Model": host.model,
        "PowerState": host.power_state,
        "Status": {"State": "Enabled", "Health": "OK"},
        "Links": {
            "Chassis": [ref(f"{V1}/Chassis/{host.system_id}")],
            "ManagedBy": [ref(f"{V1}/Managers/{state.manager_id}")],
        },
        "Actions": {
            "#ComputerSystem.Reset": {
                "target": f"{uri}/Actions/ComputerSystem.Reset",
                "ResetType@Redfish.AllowableValues": list(RESET_TYPES),
            }
        },
    }
    if host.uuid:
        body["UUID"] = host.uuid
    return body


def dpu_system(state: ServiceState, dpu: Dpu) -> dict[str, Any]:
    return {
        "@odata.id": f"{V1}/Systems/{dpu.dpu_id}",
        "@odata.type": "#ComputerSystem.v1_27_0.ComputerSystem",
        "Id": dpu.dpu_id,
        "Name": dpu.name,
        "SystemType": "DPU",
        "Model": dpu.model,
        "SerialNumber": dpu.serial_number,
        "PowerState": dpu.power_state,
        "Status": {"State": dpu.state, "Health": dpu.health},
        "Links": {
            "Chassis": [ref(f"{V1}/Chassis/{dpu.dpu_id}")],
            "ManagedBy": [ref(f"{V1}/Managers/{state.manager_id}")],
        },
    }


async def chassis_collection(state: ServiceState) -> dict[str, Any]:
    host = await state.backend.host_system()
    dpus = await state.backend.list_dpus()
    members = [f"{V1}/Chassis/{host.system_id}"] + [f"{V1}/Chassis/{d.dpu_id}" for d in dpus]
    return collection(f"{V1}/Chassis", "ChassisCollection", "Chassis", members)


async def chassis(state: ServiceState, chassis_id: str) -> dict[str, Any]:
    host = await state.backend.host_system()
    dpus = await state.backend.list_dpus()
    manager = [ref(f"{V1}/Managers/{state.manager_id}")]
    if chassis_id == host.system_id:
        return {
            "@odata.id": f"{V1}/Chassis/{host.system_id}",
            "@odata.type": "#Chassis.v1_28_0.Chassis",
            "Id": host.system_id,
            "Name": f"Chassis of {host.name}",
            "ChassisType": "RackMount",
            "PowerState": host.power_state,
            "Status": {"State": "Enabled", "Health": "OK"},
            "Links": {
                "ComputerSystems": [ref(f"{V1}/Systems/{host.system_id}")],
                "Contains": [ref(f"{V1}/Chassis/{d.dpu_id}") for d in dpus],
                "ManagedBy": manager,
            },
        }
    for dpu in dpus:
        if dpu.dpu_id == chassis_id:
            return {
                "@odata.id": f"{V1}/Chassis/{dpu.dpu_id}",
                "@odata.type": "#Chassis.v1_28_0.Chassis",
                "Id": dpu.dpu_id,
                "Name": f"Card of {dpu.name}",
                "ChassisType": "Card",
                "Model": dpu.model,
                "SerialNumber": dpu.serial_number,
                "PowerState": dpu.power_state,
                "Status": {"State": dpu.state, "Health": dpu.health},
                "Links": {
                    "ComputerSystems": [ref(f"{V1}/Systems/{dpu.dpu_id}")],
                    "ContainedBy": ref(f"{V1}/Chassis/{host.system_id}"),
                    "ManagedBy": manager,
                },
            }
    raise not_found("Chassis", chassis_id)


def managers(state: ServiceState) -> dict[str, Any]:
    return collection(f"{V1}/Managers", "ManagerCollection", "Managers",
                      [f"{V1}/Managers/{state.manager_id}"])


async def manager(state: ServiceState, manager_id: str) -> dict[str, Any]:
    if manager_id != state.manager_id:
        raise not_found("Manager", manager_id)
    host = await state.backend.host_system()
    dpus = await state.backend.list_dpus()
    return {
        "@odata.id": f"{V1}/Managers/{state.manager_id}",
        "@odata.type": "#Manager.v1_24_0.Manager",
        "Id": state.manager_id,
        "Name": "Baseboard management controller",
        "ManagerType": "BMC",
        "ServiceEntryPointUUID": state.service_uuid,
        "Status": {"State": "Enabled", "Health": "OK"},
        "Links": {
            "ManagerForServers": [ref(f"{V1}/Systems/{host.system_id}")]
            + [ref(f"{V1}/Systems/{d.dpu_id}") for d in dpus],
            "ManagerForChassis": [ref(f"{V1}/Chassis/{host.system_id}")]
            + [ref(f"{V1}/Chassis/{d.dpu_id}") for d in dpus],
        },
    }


def session_service(state: ServiceState) -> dict[str, Any]:
    return {
        "@odata.id": f"{V1}/SessionService",
        "@odata.type": "#SessionService.v1_2_0.SessionService",
        "Id": "SessionService",
        "Name": "Session service",
        "ServiceEnabled": True,
        "SessionTimeout": state.auth.session_timeout_s,
        "Status": {"State": "Enabled", "Health": "OK"},
        "Sessions": ref(f"{V1}/SessionService/Sessions"),
    }


def sessions(state: ServiceState) -> dict[str, Any]:
    return collection(f"{V1}/SessionService/Sessions", "SessionCollection", "Sessions",
                      [f"{V1}/SessionService/Sessions/{s}" for s in state.auth.sessions])


def session(state: ServiceState, session_id: str) -> dict[str, Any]:
    found = state.auth.sessions.get(session_id)
    if found is None:
        raise not_found("Session", session_id)
    return {
        "@odata.id": f"{V1}/SessionService/Sessions/{session_id}",
        "@odata.type": "#Session.v1_8_0.Session",
        "Id": session_id,
        "Name": f"Session of {found.user_name}",
        "UserName": found.user_name,
        "Password": None,
    }


def account_service(state: ServiceState) -> dict[str, Any]:
    return {
        "@odata.id": f"{V1}/AccountService",
        "@odata.type": "#AccountService.v1_18_1.AccountService",
        "Id": "AccountService",
        "Name": "Account service",
        "ServiceEnabled": True,
        "MinPasswordLength": MIN_PASSWORD_LENGTH,
        "MaxPasswordLength": MAX_PASSWORD_LENGTH,
        "Status": {"State": "Enabled", "Health": "OK"},
        "Accounts": ref(f"{V1}/AccountService/Accounts"),
        "Roles": ref(f"{V1}/AccountService/Roles"),
    }


def accounts(state: ServiceState) -> dict[str, Any]:
    return collection(f"{V1}/AccountService/Accounts", "ManagerAccountCollection", "Accounts",
                      [f"{V1}/AccountService/Accounts/{a}" for a in state.auth.accounts])


def account(state: ServiceState, account_id: str) -> dict[str, Any]:
    found = state.auth.accounts.get(account_id)
    if found is None:
        raise not_found("ManagerAccount", account_id)
    body = {
        "@odata.id": f"{V1}/AccountService/Accounts/{account_id}",
        "@odata.type": "#ManagerAccount.v1_14_1.ManagerAccount",
        "Id": account_id,
        "Name": f"Account {found.user_name}",
        "UserName": found.user_name,
        "RoleId": found.role_id,
        "Enabled": found.enabled,
        "Locked": found.locked,
        "Password": None,
        "AccountTypes": ["Redfish"],
        "Links": {"Role": ref(f"{V1}/AccountService/Roles/{found.role_id}")},
    }
    body["@odata.etag"] = etag_of(body)
    return body


def roles(state: ServiceState) -> dict[str, Any]:
    return collection(f"{V1}/AccountService/Roles", "RoleCollection", "Roles",
                      [f"{V1}/AccountService/Roles/{r}" for r in ROLE_PRIVILEGES])


def role(state: ServiceState, role_id: str) -> dict[str, Any]:
    if role_id not in ROLE_PRIVILEGES:
        raise not_found("Role", role_id)
    return {
        "@odata.id": f"{V1}/AccountService/Roles/{role_id}",
        "@odata.type": "#Role.v1_3_3.Role",
        "Id": role_id,
        "Name": f"{role_id} role",
        "RoleId": role_id,
        "IsPredefined": True,
        "AssignedPrivileges": list(ROLE_PRIVILEGES[role_id]),
    }


def update_service(state: ServiceState) -> dict[str, Any]:
    return {
        "@odata.id": f"{V1}/UpdateService",
        "@odata.type": "#UpdateService.v1_17_0.UpdateService",
        "Id": "UpdateService",
        "Name": "Update service",
        "ServiceEnabled": True,
        "Status": {"State": "Enabled", "Health": "OK"},
        "FirmwareInventory": ref(INVENTORY_URI),
        "Actions": {
            "#UpdateService.SimpleUpdate": {
                "target": f"{V1}/UpdateService/Actions/UpdateService.SimpleUpdate",
                "TransferProtocol@Redfish.AllowableValues": list(TRANSFER_PROTOCOLS),
            }
        },
    }


async def firmware_inventory(state: ServiceState) -> dict[str, Any]:
    components = await state.backend.firmware_inventory()
    return collection(INVENTORY_URI, "SoftwareInventoryCollection", "Firmware inventory",
                      [f"{INVENTORY_URI}/{c.component_id}" for c in components])


async def firmware_component(state: ServiceState, component_id: str) -> dict[str, Any]:
    for component in await state.backend.firmware_inventory():
        if component.component_id != component_id:
            continue
        related = (f"{V1}/Systems/{component.dpu_id}" if component.dpu_id
                   else f"{V1}/Managers/{state.manager_id}")
        return {
            "@odata.id": f"{INVENTORY_URI}/{component_id}",
            "@odata.type": "#SoftwareInventory.v1_13_0.SoftwareInventory",
            "Id": component_id,
            "Name": component.name,
            "Version": component.version,
            "Updateable": component.updateable,
            "Status": {"State": "Enabled", "Health": "OK"},
            "RelatedItem": [ref(related)],
        }
    raise not_found("SoftwareInventory", component_id)


def task_service(state: ServiceState) -> dict[str, Any]:
    return {
        "@odata.id": f"{V1}/TaskService",
        "@odata.type": "#TaskService.v1_3_0.TaskService",
        "Id": "TaskService",
        "Name": "Task service",
        "ServiceEnabled": True,
        "CompletedTaskOverWritePolicy": "Oldest",
        "LifeCycleEventOnTaskStateChange": True,
        "Status": {"State": "Enabled", "Health": "OK"},
        "Tasks": ref(f"{V1}/TaskService/Tasks"),
    }


def tasks(state: ServiceState) -> dict[str, Any]:
    return collection(f"{V1}/TaskService/Tasks", "TaskCollection", "Tasks",
                      [task.uri for task in state.tasks.all()])


def task(state: ServiceState, task_id: str) -> dict[str, Any]:
    found = state.tasks.get(task_id)
    if found is None:
        raise not_found("Task", task_id)
    return found.resource()


def event_service(state: ServiceState) -> dict[str, Any]:
    return {
        "@odata.id": f"{V1}/EventService",
        "@odata.type": "#EventService.v1_12_0.EventService",
        "Id": "EventService",
        "Name": "Event service",
        "ServiceEnabled": True,
        "ServerSentEventUri": f"{V1}/EventService/SSE",
        "Status": {"State": "Enabled", "Health": "OK"},
    }
