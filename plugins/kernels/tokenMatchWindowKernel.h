// TokenMatchWindow (docs/ops.md): ALGM local merging, whole 2x2 windows -> slot [B, N] int32.
#pragma once

#include "kernelTypes.h"
#include <cuda_runtime.h>

namespace edgemerge
{

struct TokenMatchWindowParams
{
    float const* metric{}; //!< [B, N, C] fp32, N = protect + height * width, row-major grid
    int32_t* slot{};       //!< [B, N] int32 output, values in [0, N - 3k)
    int32_t B{}, N{}, C{};
    int32_t height{}, width{}; //!< even
    int32_t k{};               //!< windows merged, 0 <= k <= (height / 2) * (width / 2)
    int32_t protect{};         //!< leading tokens never merged
    void* workspace{};         //!< tokenMatchWindowWorkspaceSize(B, N, C, height, width) bytes
};

//! Scratch: normalised metric [B,N,C] f32, score [B,W] f32, window rank [B,W] i32.
size_t tokenMatchWindowWorkspaceSize(int32_t B, int32_t N, int32_t C, int32_t height, int32_t width);

cudaError_t launchTokenMatchWindow(cudaStream_t stream, TokenMatchWindowParams const& p);

} // namespace edgemerge
