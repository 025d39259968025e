// TokenUnmerge (docs/ops.md): x[b, i, :] = merged[b, slot[b, i], :] (one gather).
#pragma once

#include "kernelTypes.h"
#include <cuda_runtime.h>

namespace edgemerge
{

struct TokenUnmergeParams
{
    void const* merged{};  //!< [B, M, C] fp32 or fp16 (dtype)
    int32_t const* slot{}; //!< [B, N] int32; out-of-range slots produce zeros
    void* x{};             //!< [B, N, C] dtype
    int32_t B{}, N{}, M{}, C{};
    DataType dtype{DataType::kFLOAT32};
};

cudaError_t launchTokenUnmerge(cudaStream_t stream, TokenUnmergeParams const& p);

} // namespace edgemerge
