// TokenMergeCell (docs/ops.md): TokenMerge on slots in TokenMatchCell's layout, O(B * N * C).
#pragma once

#include "kernelTypes.h"
#include <cuda_runtime.h>

namespace edgemerge
{

struct TokenMergeCellParams
{
    void const* x{};       //!< [B, N, C] fp32 or fp16 (dtype), N = height * width, row-major
    void const* size{};    //!< [B, N, 1] same dtype as x
    int32_t const* slot{}; //!< [B, N] int32 in TokenMatchCell's layout (kept at 0..K-1, cell c at K + c)
    void* merged{};        //!< [B, M, C] dtype
    void* mergedSize{};    //!< [B, M, 1] dtype
    int32_t B{}, N{}, M{}, C{};
    int32_t height{}, width{}; //!< the token grid
    int32_t sy{}, sx{};        //!< the cell; both divide the grid; M >= (height / sy) * (width / sx)
    DataType dtype{DataType::kFLOAT32};
};

cudaError_t launchTokenMergeCell(cudaStream_t stream, TokenMergeCellParams const& p);

} // namespace edgemerge
