// TokenMerge (docs/ops.md): size-weighted mean of the tokens that share a slot.
#pragma once

#include "kernelTypes.h"
#include <cuda_runtime.h>

namespace edgemerge
{

struct TokenMergeParams
{
    void const* x{};        //!< [B, N, C] fp32 or fp16 (dtype)
    void const* size{};     //!< [B, N, 1] same dtype as x
    int32_t const* slot{};  //!< [B, N] int32; values outside [0, M) are ignored
    void* merged{};         //!< [B, M, C] dtype
    void* mergedSize{};     //!< [B, M, 1] dtype
    int32_t B{}, N{}, M{}, C{};
    DataType dtype{DataType::kFLOAT32};
};

//! Dynamic shared memory of one em_token_merge_* block (C floats + 128 ints); must be <= 48 KB.
size_t tokenMergeSharedBytes(int32_t C);

cudaError_t launchTokenMerge(cudaStream_t stream, TokenMergeParams const& p);

} // namespace edgemerge
