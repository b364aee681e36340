"""DPU agent: the DPUs of the cluster, one per host."""
