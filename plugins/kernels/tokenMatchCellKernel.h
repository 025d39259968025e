// TokenMatchCell (docs/ops.md): cell-local grid matching on an fp32 metric -> slot [B, N] int32.
#pragma once

#include "kernelTypes.h"
#include <cuda_runtime.h>

namespace edgemerge
{

struct TokenMatchCellParams
{
    float const* metric{}; //!< [B, N, C] fp32, N = height * width, row-major
    int32_t* slot{};       //!< [B, N] int32 output, values in [0, N - r)
    int32_t B{}, N{}, C{};
    int32_t height{}, width{}; //!< the token grid
    int32_t sy{}, sx{};        //!< the cell; both divide the grid
    int32_t r{};               //!< sources merged, 0 <= r <= N - (height / sy) * (width / sx)
    void* workspace{};         //!< tokenMatchCellWorkspaceSize(B, N) bytes
};

//! Scratch: score [B, N] f32, merged [B, N] i32.
size_t tokenMatchCellWorkspaceSize(int32_t B, int32_t N);

cudaError_t launchTokenMatchCell(cudaStream_t stream, TokenMatchCellParams const& p);

} // namespace edgemerge
