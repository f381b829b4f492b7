"""Training for modularity and measuring it: BIMT (Liu, Gan & Tegmark 2023) and clusterability (Golechha et al.)."""
