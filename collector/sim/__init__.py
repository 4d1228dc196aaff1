"""Fleet simulator: vectorised device physics, faults and an NVML device model."""
