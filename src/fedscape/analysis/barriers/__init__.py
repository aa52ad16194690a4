"""Loss barriers between models: linear interpolation (Li et al. 2022), mode connectivity along a trained
quadratic Bezier curve (Garipov et al. 2018) and layer-wise linear mode connectivity (Adilova, Fischer & Jaggi
2023)."""
