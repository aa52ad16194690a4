"""Loss barriers between models: linear interpolation (Li et al. 2022) and layer-wise linear mode
connectivity (Adilova, Fischer & Jaggi 2023)."""
