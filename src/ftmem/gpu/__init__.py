"""What a CUDA GPU adds beyond the tensors: allocator, runtime, kernels."""
