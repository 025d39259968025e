// TokenMatchWindow kernels (docs/ops.md). Four passes, all deterministic:
//   1. em_match_window_normalize: m = metric / max(||metric||, 1e-6), one warp per row.
//   2. em_match_window_scores: one warp per (b, window): the 6 distinct pairwise cosines of the
//      window's 4 tokens; score = 2 * sum / 12 (the mean of the 12 off-diagonal entries).
//   3. em_match_window_rank: every window's rank in a stable descending sort of the scores
//      (common.cuh::rankOrder); the windows of rank < k merge.
//   4. em_match_window_slots: one block per batch; a block scan over tokens numbers the kept
//      tokens in input order. Layout (ALGM's order): protected token i takes i, the 4 tokens of
//      the merged window of rank w take protect + w, the other kept tokens protect + k onwards.
#include "common.cuh"
#include "tokenMatchWindowKernel.h"

using namespace edgemerge_detail;

namespace
{
// Token position of corner q (0..3: top-left, top-right, bottom-left, bottom-right) of window w.
__device__ __forceinline__ int windowToken(int w, int q, int width, int protect)
{
    int const cellsPerRow = width / 2;
    int const row = (w / cellsPerRow) * 2 + (q >> 1);
    int const col = (w % cellsPerRow) * 2 + (q & 1);
    return protect + row * width + col;
}
} // namespace

// block 256, grid ceil(rows / 8)
extern "C" __global__ void em_match_window_normalize(float const* metric, float* out, int rows, int C)
{
    normalizeRows(metric, out, rows, C);
}

// block 256 (8 warps), grid ceil(B * W / 8). mn: normalised metric [B, N, C]; score [B, W].
extern "C" __global__ void em_match_window_scores(
    float const* mn, float* score, int B, int N, int C, int height, int width, int protect)
{
    int const W = (height / 2) * (width / 2);
    int const item = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int const lane = threadIdx.x & 31;
    if (item >= B * W)
        return;
    int const b = item / W;
    int const w = item % W;
    float const* mb = mn + static_cast<int64_t>(b) * N * C;
    float const* t0 = mb + static_cast<int64_t>(windowToken(w, 0, width, protect)) * C;
    float const* t1 = mb + static_cast<int64_t>(windowToken(w, 1, width, protect)) * C;
    float const* t2 = mb + static_cast<int64_t>(windowToken(w, 2, width, protect)) * C;
    float const* t3 = mb + static_cast<int64_t>(windowToken(w, 3, width, protect)) * C;
    float p01 = 0.f, p02 = 0.f, p03 = 0.f, p12 = 0.f, p13 = 0.f, p23 = 0.f;
    for (int c = lane; c < C; c += 32)
    {
        float const a = t0[c], bb = t1[c], cc = t2[c], d = t3[c];
        p01 += a * bb;
        p02 += a * cc;
        p03 += a * d;
        p12 += bb * cc;
        p13 += bb * d;
        p23 += cc * d;
    }
    float const sum = warpSum(p01) + warpSum(p02) + warpSum(p03) + warpSum(p12) + warpSum(p13) + warpSum(p23);
    if (lane == 0)
        score[item] = (2.f * sum) / 12.f;
}

// block 256, grid (ceil(W / 256), B). rank [B, W].
extern "C" __global__ void em_match_window_rank(float const* score, int* rank, int W)
{
    rankOrder(score, rank, W);
}

// block 1024, grid B. rank: [B, W] from em_match_window_rank.
extern "C" __global__ void em_match_window_slots(
    int const* rank, int* slot, int N, int height, int width, int protect, int k)
{
    __shared__ int shWarp[32];
    int const W = (height / 2) * (width / 2);
    int const b = blockIdx.x;
    rank += static_cast<int64_t>(b) * W;
    slot += static_cast<int64_t>(b) * N;

    int const cellsPerRow = width / 2;
    int offset = 0;
    for (int i0 = 0; i0 < N; i0 += blockDim.x)
    {
        int const i = i0 + threadIdx.x;
        int w = -1;
        if (i < N && i >= protect)
        {
            int const g = i - protect;
            w = ((g / width) / 2) * cellsPerRow + (g % width) / 2;
        }
        int const keep = (i < N && (w < 0 || rank[w] >= k)) ? 1 : 0;
        int total = 0;
        int const excl = blockExclusiveScan(keep, shWarp, total);
        if (i < N)
            slot[i] = keep ? offset + excl + (i < protect ? 0 : k) : protect + rank[w];
        offset += total;
    }
}

namespace edgemerge
{

namespace
{
size_t partSizes(int32_t B, int32_t N, int32_t C, int32_t W, size_t* parts)
{
    parts[0] = alignWorkspace(sizeof(float) * static_cast<size_t>(B) * N * C);
    parts[1] = alignWorkspace(sizeof(float) * static_cast<size_t>(B) * W);
    parts[2] = alignWorkspace(sizeof(int32_t) * static_cast<size_t>(B) * W);
    return parts[0] + parts[1] + parts[2];
}
} // namespace

size_t tokenMatchWindowWorkspaceSize(int32_t B, int32_t N, int32_t C, int32_t height, int32_t width)
{
    size_t parts[3];
    return partSizes(B, N, C, (height / 2) * (width / 2), parts);
}

cudaError_t launchTokenMatchWindow(cudaStream_t stream, TokenMatchWindowParams const& p)
{
    int32_t const W = (p.height / 2) * (p.width / 2);
    if (p.B < 0 || p.C <= 0 || p.height <= 0 || p.width <= 0 || p.height % 2 != 0 || p.width % 2 != 0
        || p.protect < 0 || p.N != p.protect + p.height * p.width || p.k < 0 || p.k > W || p.metric == nullptr
        || p.slot == nullptr || p.workspace == nullptr)
    {
        return cudaErrorInvalidValue;
    }
    if (p.B == 0)
        return cudaSuccess;
    size_t parts[3];
    partSizes(p.B, p.N, p.C, W, parts);
    char* ws = static_cast<char*>(p.workspace);
    float* mn = reinterpret_cast<float*>(ws);
    float* score = reinterpret_cast<float*>(ws + parts[0]);
    int32_t* winRank = reinterpret_cast<int32_t*>(ws + parts[0] + parts[1]);

    int const rows = p.B * p.N;
    em_match_window_normalize<<<(rows + 7) / 8, 256, 0, stream>>>(p.metric, mn, rows, p.C);
    int const items = p.B * W;
    em_match_window_scores<<<(items + 7) / 8, 256, 0, stream>>>(
        mn, score, p.B, p.N, p.C, p.height, p.width, p.protect);
    em_match_window_rank<<<dim3((W + 255) / 256, p.B), 256, 0, stream>>>(score, winRank, W);
    em_match_window_slots<<<p.B, 1024, 0, stream>>>(winRank, p.slot, p.N, p.height, p.width, p.protect, p.k);
    return cudaGetLastError();
}

} // namespace edgemerge
