// TokenMatchBipartite kernels (docs/ops.md). Four passes, all deterministic:
//   1. em_match_bipartite_normalize: m = metric / max(||metric||, 1e-6), one warp per row.
//   2. em_match_bipartite_scores: tiled m[src] @ m[dst]^T fused with the row max/argmax
//      (lowest index on ties); protected sources get -inf. Scores are never stored.
//   3. em_match_bipartite_rank: stable top-r as a rank (see common.cuh::rankSelect).
//   4. em_match_bipartite_slots: one block per batch; a block scan over the sources gives the
//      unmerged sources their slots in src order, merged ones S-r+node_idx, dst d gets S-r+d.
// The extern "C" kernels take only pointers and ints so the Python plugin can launch the PTX.
#include "common.cuh"
#include "tokenMatchBipartiteKernel.h"

using namespace edgemerge_detail;

namespace
{
constexpr int kTile = 16; // score tile: 16 sources x 16 destinations, C in chunks of 16
}

// block 256, grid ceil(rows / 8)
extern "C" __global__ void em_match_bipartite_normalize(float const* metric, float* out, int rows, int C)
{
    normalizeRows(metric, out, rows, C);
}

// block (16, 16), grid (ceil(S / 16), B). mn: normalised metric [B, N, C].
extern "C" __global__ void em_match_bipartite_scores(float const* mn, int const* srcPos, int const* dstPos,
    float* nodeMax, int* nodeIdx, int N, int C, int S, int D, int protect)
{
    __shared__ float As[kTile][kTile + 1];
    __shared__ float Bs[kTile][kTile + 1];
    __shared__ float redVal[kTile][kTile];
    __shared__ int redIdx[kTile][kTile];

    int const b = blockIdx.y;
    int const tx = threadIdx.x; // destination within the tile / channel when loading
    int const ty = threadIdx.y; // source within the tile
    int const s = blockIdx.x * kTile + ty;
    float const* mb = mn + static_cast<int64_t>(b) * N * C;
    int const sPos = s < S ? srcPos[s] : 0;

    float best = 0.f;
    int bestIdx = -1;
    for (int d0 = 0; d0 < D; d0 += kTile)
    {
        int const dLoad = d0 + ty; // row of Bs this thread loads
        int const dPos = dLoad < D ? dstPos[dLoad] : 0;
        float acc = 0.f;
        for (int c0 = 0; c0 < C; c0 += kTile)
        {
            int const c = c0 + tx;
            As[ty][tx] = (s < S && c < C) ? mb[static_cast<int64_t>(sPos) * C + c] : 0.f;
            Bs[ty][tx] = (dLoad < D && c < C) ? mb[static_cast<int64_t>(dPos) * C + c] : 0.f;
            __syncthreads();
#pragma unroll
            for (int k = 0; k < kTile; ++k)
                acc += As[ty][k] * Bs[tx][k];
            __syncthreads();
        }
        int const d = d0 + tx;
        // d grows within a thread, so a strict '>' keeps the lowest index among equal maxima
        if (d < D && (bestIdx < 0 || acc > best))
        {
            best = acc;
            bestIdx = d;
        }
    }
    redVal[ty][tx] = best;
    redIdx[ty][tx] = bestIdx;
    __syncthreads();
    if (tx == 0 && s < S)
    {
        float v = redVal[ty][0];
        int idx = redIdx[ty][0];
        for (int j = 1; j < kTile; ++j)
        {
            float const u = redVal[ty][j];
            int const ui = redIdx[ty][j];
            if (ui < 0)
                continue;
            if (idx < 0 || u > v || (u == v && ui < idx))
            {
                v = u;
                idx = ui;
            }
        }
        nodeMax[static_cast<int64_t>(b) * S + s] = s < protect ? -CUDART_INF_F : v;
        nodeIdx[static_cast<int64_t>(b) * S + s] = idx;
    }
}

// block 256, grid (ceil(S / 256), B)
extern "C" __global__ void em_match_bipartite_rank(float const* nodeMax, int* merged, int S, int r)
{
    rankSelect(nodeMax, merged, S, r);
}

// block 1024, grid B. A block-level scan over the S sources, in chunks of blockDim.
extern "C" __global__ void em_match_bipartite_slots(int const* merged, int const* nodeIdx, int const* srcPos,
    int const* dstPos, int* slot, int N, int S, int D, int r)
{
    __shared__ int shWarp[32];
    int const b = blockIdx.x;
    merged += static_cast<int64_t>(b) * S;
    nodeIdx += static_cast<int64_t>(b) * S;
    slot += static_cast<int64_t>(b) * N;
    int const base = S - r; // first slot of the destinations
    int offset = 0;
    for (int s0 = 0; s0 < S; s0 += blockDim.x)
    {
        int const s = s0 + threadIdx.x;
        int const keep = (s < S && !merged[s]) ? 1 : 0;
        int total = 0;
        int const excl = blockExclusiveScan(keep, shWarp, total);
        if (s < S)
            slot[srcPos[s]] = keep ? offset + excl : base + nodeIdx[s];
        offset += total;
    }
    for (int d = threadIdx.x; d < D; d += blockDim.x)
        slot[dstPos[d]] = base + d;
}

namespace edgemerge
{

namespace
{
struct BipartiteWorkspace
{
    float* mn;
    float* nodeMax;
    int32_t* nodeIdx;
    int32_t* merged;
};

size_t partSizes(int32_t B, int32_t N, int32_t C, int32_t S, size_t* parts)
{
    parts[0] = alignWorkspace(sizeof(float) * static_cast<size_t>(B) * N * C);
    parts[1] = alignWorkspace(sizeof(float) * static_cast<size_t>(B) * S);
    parts[2] = alignWorkspace(sizeof(int32_t) * static_cast<size_t>(B) * S);
    parts[3] = alignWorkspace(sizeof(int32_t) * static_cast<size_t>(B) * S);
    return parts[0] + parts[1] + parts[2] + parts[3];
}
} // namespace

size_t tokenMatchBipartiteWorkspaceSize(int32_t B, int32_t N, int32_t C, int32_t S)
{
    size_t parts[4];
    return partSizes(B, N, C, S, parts);
}

cudaError_t launchTokenMatchBipartite(cudaStream_t stream, TokenMatchBipartiteParams const& p)
{
    if (p.B < 0 || p.N < 0 || p.C <= 0 || p.S < 0 || p.D <= 0 || p.S + p.D != p.N || p.r < 0 || p.protect < 0
        || p.r > p.S - p.protect || p.metric == nullptr || p.slot == nullptr || p.srcPos == nullptr
        || p.dstPos == nullptr || p.workspace == nullptr)
    {
        return cudaErrorInvalidValue;
    }
    if (p.B == 0)
        return cudaSuccess;
    size_t parts[4];
    partSizes(p.B, p.N, p.C, p.S, parts);
    char* ws = static_cast<char*>(p.workspace);
    BipartiteWorkspace w{reinterpret_cast<float*>(ws), reinterpret_cast<float*>(ws + parts[0]),
        reinterpret_cast<int32_t*>(ws + parts[0] + parts[1]),
        reinterpret_cast<int32_t*>(ws + parts[0] + parts[1] + parts[2])};

    int const rows = p.B * p.N;
    em_match_bipartite_normalize<<<(rows + 7) / 8, 256, 0, stream>>>(p.metric, w.mn, rows, p.C);
    if (p.S > 0)
    {
        dim3 const scoreGrid((p.S + kTile - 1) / kTile, p.B);
        em_match_bipartite_scores<<<scoreGrid, dim3(kTile, kTile), 0, stream>>>(
            w.mn, p.srcPos, p.dstPos, w.nodeMax, w.nodeIdx, p.N, p.C, p.S, p.D, p.protect);
        dim3 const rankGrid((p.S + 255) / 256, p.B);
        em_match_bipartite_rank<<<rankGrid, 256, 0, stream>>>(w.nodeMax, w.merged, p.S, p.r);
    }
    em_match_bipartite_slots<<<p.B, 1024, 0, stream>>>(
        w.merged, w.nodeIdx, p.srcPos, p.dstPos, p.slot, p.N, p.S, p.D, p.r);
    return cudaGetLastError();
}

} // namespace edgemerge
