"""BMC agent: one Redfish service per host."""
