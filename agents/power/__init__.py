"""Cluster power manager: places VMs and powers hosts on and off."""
