// norms kernels
