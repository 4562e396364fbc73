"""ddk.kernels: sparse top-k KL (+CE) loss kernels."""
