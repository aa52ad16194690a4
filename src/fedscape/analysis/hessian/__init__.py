"""The Hessian of a global model's loss: top eigenvalues, trace, spectral density and the cross-client
HN / HD (PyHessian, Yao et al. 2020; FedAlign, Mendieta et al. 2022)."""
