// TokenMatchBipartite (docs/ops.md): ToMe bipartite matching on an fp32 metric -> slot [B, N] int32.
#pragma once

#include "kernelTypes.h"
#include <cuda_runtime.h>

namespace edgemerge
{

struct TokenMatchBipartiteParams
{
    float const* metric{};   //!< [B, N, C] fp32
    int32_t* slot{};         //!< [B, N] int32 output, values in [0, N - r)
    int32_t const* srcPos{}; //!< [S] device array: positions of the source set, ascending
    int32_t const* dstPos{}; //!< [D] device array: positions of the destination set, ascending
    int32_t B{}, N{}, C{};
    int32_t S{}, D{};        //!< S + D == N
    int32_t r{};             //!< sources merged, 0 <= r <= S - protect
    int32_t protect{};       //!< the first `protect` sources never merge
    void* workspace{};       //!< tokenMatchBipartiteWorkspaceSize(B, N, C, S) bytes
};

//! Scratch: normalised metric [B,N,C] f32, node_max [B,S] f32, node_idx [B,S] i32, merged [B,S] i32.
size_t tokenMatchBipartiteWorkspaceSize(int32_t B, int32_t N, int32_t C, int32_t S);

cudaError_t launchTokenMatchBipartite(cudaStream_t stream, TokenMatchBipartiteParams const& p);

} // namespace edgemerge
