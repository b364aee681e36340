"""dcfleet agents: the processes of an emulated datacenter control plane."""
