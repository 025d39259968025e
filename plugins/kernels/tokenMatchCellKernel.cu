// TokenMatchCell kernels (docs/ops.md). Three passes, all deterministic:
//   1. em_match_cell_scores: one warp per token, the cosine with its own cell's anchor
//      (dot / (max(|x|, 1e-6) * max(|a|, 1e-6)), the reference's normalise-then-dot in one pass:
//      no normalised copy of the metric, no S x D scores); an anchor scores -inf.
//   2. em_match_cell_rank: stable top-r over all N positions as a rank (common.cuh::rankSelect);
//      anchors at -inf never rank among r <= S, so ties go to the lower position as the spec says.
//   3. em_match_cell_slots: one block per batch; a block scan over the tokens gives the kept
//      sources 0 .. S-r-1 in input order; a merged source and its anchor take S-r+cell.
// The selection pass compares all N positions pairwise (O(N^2) compares, as TokenMatchBipartite's
// over S): cheap compares, but the part that grows fastest at high resolution.
#include "common.cuh"
#include "tokenMatchCellKernel.h"

using namespace edgemerge_detail;

namespace
{
__device__ __forceinline__ int cellAnchor(int p, int width, int sy, int sx)
{
    int const i = p / width;
    int const j = p - i * width;
    return (i - i % sy) * width + (j - j % sx);
}
} // namespace

// block 256 (8 warps), grid (ceil(N / 8), B)
extern "C" __global__ void em_match_cell_scores(
    float const* metric, float* score, int N, int C, int width, int sy, int sx)
{
    int const p = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int const lane = threadIdx.x & 31;
    int const b = blockIdx.y;
    if (p >= N)
        return;
    int const a = cellAnchor(p, width, sy, sx);
    float const* x = metric + (static_cast<int64_t>(b) * N + p) * C;
    float const* y = metric + (static_cast<int64_t>(b) * N + a) * C;
    float xx = 0.f, yy = 0.f, xy = 0.f;
    for (int c = lane; c < C; c += 32)
    {
        xx += x[c] * x[c];
        yy += y[c] * y[c];
        xy += x[c] * y[c];
    }
    xx = warpSum(xx);
    yy = warpSum(yy);
    xy = warpSum(xy);
    if (lane == 0)
        score[static_cast<int64_t>(b) * N + p]
            = a == p ? -CUDART_INF_F : xy / (fmaxf(sqrtf(xx), 1e-6f) * fmaxf(sqrtf(yy), 1e-6f));
}

// block 256, grid (ceil(N / 256), B)
extern "C" __global__ void em_match_cell_rank(float const* score, int* merged, int N, int r)
{
    rankSelect(score, merged, N, r);
}

// block 1024, grid B. A block-level scan over the N tokens, in chunks of blockDim.
extern "C" __global__ void em_match_cell_slots(
    int const* merged, int* slot, int N, int width, int sy, int sx, int r)
{
    __shared__ int shWarp[32];
    int const b = blockIdx.x;
    merged += static_cast<int64_t>(b) * N;
    slot += static_cast<int64_t>(b) * N;
    int const cellsPerRow = width / sx;
    int const S = N - (N / width / sy) * cellsPerRow;
    int offset = 0;
    for (int p0 = 0; p0 < N; p0 += blockDim.x)
    {
        int const p = p0 + threadIdx.x;
        int keep = 0;
        int cell = 0;
        if (p < N)
        {
            int const i = p / width;
            int const j = p - i * width;
            cell = (i / sy) * cellsPerRow + j / sx;
            keep = (cellAnchor(p, width, sy, sx) != p && !merged[p]) ? 1 : 0;
        }
        int total = 0;
        int const excl = blockExclusiveScan(keep, shWarp, total);
        if (p < N)
            slot[p] = keep ? offset + excl : S - r + cell;
        offset += total;
    }
}

namespace edgemerge
{

namespace
{
size_t partSizes(int32_t B, int32_t N, size_t* parts)
{
    parts[0] = alignWorkspace(sizeof(float) * static_cast<size_t>(B) * N);
    parts[1] = alignWorkspace(sizeof(int32_t) * static_cast<size_t>(B) * N);
    return parts[0] + parts[1];
}
} // namespace

size_t tokenMatchCellWorkspaceSize(int32_t B, int32_t N)
{
    size_t parts[2];
    return partSizes(B, N, parts);
}

cudaError_t launchTokenMatchCell(cudaStream_t stream, TokenMatchCellParams const& p)
{
    if (p.B < 0 || p.C <= 0 || p.height <= 0 || p.width <= 0 || p.sy <= 0 || p.sx <= 0 || p.height % p.sy != 0
        || p.width % p.sx != 0 || p.N != p.height * p.width || p.r < 0
        || p.r > p.N - (p.height / p.sy) * (p.width / p.sx) || p.metric == nullptr || p.slot == nullptr
        || p.workspace == nullptr)
    {
        return cudaErrorInvalidValue;
    }
    if (p.B == 0)
        return cudaSuccess;
    size_t parts[2];
    partSizes(p.B, p.N, parts);
    char* ws = static_cast<char*>(p.workspace);
    float* score = reinterpret_cast<float*>(ws);
    int32_t* merged = reinterpret_cast<int32_t*>(ws + parts[0]);

    em_match_cell_scores<<<dim3((p.N + 7) / 8, p.B), 256, 0, stream>>>(
        p.metric, score, p.N, p.C, p.width, p.sy, p.sx);
    em_match_cell_rank<<<dim3((p.N + 255) / 256, p.B), 256, 0, stream>>>(score, merged, p.N, p.r);
    em_match_cell_slots<<<p.B, 1024, 0, stream>>>(merged, p.slot, p.N, p.width, p.sy, p.sx, p.r);
    return cudaGetLastError();
}

} // namespace edgemerge
