// Shared device helpers for the edgemerge kernels. Header-only and `static`, so every .cu that
// includes it is self-contained (the Python plugin compiles each .cu to PTX on its own).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math_constants.h>
#include <stdint.h>

namespace edgemerge_detail
{

constexpr unsigned kFullMask = 0xffffffffu;

static __device__ __forceinline__ float toFloat(float v) { return v; }
static __device__ __forceinline__ float toFloat(__half v) { return __half2float(v); }
template <typename T>
static __device__ __forceinline__ T fromFloat(float v);
template <>
__device__ __forceinline__ float fromFloat<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half fromFloat<__half>(float v) { return __float2half(v); }

// Fixed-order warp sum (xor butterfly): deterministic for a given input.
static __device__ __forceinline__ float warpSum(float v)
{
    for (int off = 16; off > 0; off >>= 1)
        v += __shfl_xor_sync(kFullMask, v, off);
    return v;
}

// Exclusive prefix sum of `v` over the block (blockDim.x a multiple of 32, <= 1024).
// `shWarp` is >= 32 ints of shared memory. Every thread must call it. `total` = block sum.
static __device__ __forceinline__ int blockExclusiveScan(int v, int* shWarp, int& total)
{
    int const lane = threadIdx.x & 31;
    int const warp = threadIdx.x >> 5;
    int const nWarps = blockDim.x >> 5;
    int x = v;
    for (int off = 1; off < 32; off <<= 1)
    {
        int const y = __shfl_up_sync(kFullMask, x, off);
        if (lane >= off)
            x += y;
    }
    if (lane == 31)
        shWarp[warp] = x;
    __syncthreads();
    if (warp == 0)
    {
        int w = lane < nWarps ? shWarp[lane] : 0;
        for (int off = 1; off < 32; off <<= 1)
        {
            int const y = __shfl_up_sync(kFullMask, w, off);
            if (lane >= off)
                w += y;
        }
        shWarp[lane] = w;
    }
    __syncthreads();
    int const warpOffset = warp > 0 ? shWarp[warp - 1] : 0;
    total = shWarp[nWarps - 1];
    __syncthreads(); // shWarp may be reused by the caller's next scan
    return warpOffset + x - v;
}

// m = x / max(||x||_2, 1e-6) for `rows` rows of length C; one warp per row.
// Launch: block 256 (8 warps), grid ceil(rows / 8).
static __device__ __forceinline__ void normalizeRows(float const* x, float* y, int rows, int C)
{
    int const row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int const lane = threadIdx.x & 31;
    if (row >= rows)
        return;
    float const* xr = x + static_cast<int64_t>(row) * C;
    float* yr = y + static_cast<int64_t>(row) * C;
    float ss = 0.f;
    for (int c = lane; c < C; c += 32)
        ss += xr[c] * xr[c];
    ss = warpSum(ss);
    float const denom = fmaxf(sqrtf(ss), 1e-6f);
    for (int c = lane; c < C; c += 32)
        yr[c] = xr[c] / denom;
}

// Rank in a stable descending sort: element s of vals[0..S) has rank
//   #{t : vals[t] > vals[s] or (vals[t] == vals[s] and t < s)},
// so the first k of the sort are exactly those with rank < k. O(S^2) compares per batch row, all
// threads independent (S = 7680: ~59M compares per batch, tens to a few hundred microseconds).
// Launch: block 256, grid (ceil(S / 256), B); vals/out are offset by b * S.
// rankSelect writes 1 for rank < k, else 0; rankOrder writes the rank itself.
static __device__ __forceinline__ int stableDescendingRank(float const* vals, int S)
{
    __shared__ float tile[256];
    int const s = blockIdx.x * blockDim.x + threadIdx.x;
    float const v = s < S ? vals[s] : 0.f;
    int count = 0;
    for (int t0 = 0; t0 < S; t0 += blockDim.x)
    {
        int const t = t0 + threadIdx.x;
        tile[threadIdx.x] = t < S ? vals[t] : -CUDART_INF_F;
        __syncthreads();
        int const n = min(static_cast<int>(blockDim.x), S - t0);
        for (int j = 0; j < n; ++j)
        {
            float const u = tile[j];
            count += (u > v) || (u == v && t0 + j < s);
        }
        __syncthreads();
    }
    return count;
}

static __device__ __forceinline__ void rankSelect(float const* vals, int* selected, int S, int k)
{
    int const b = blockIdx.y;
    vals += static_cast<int64_t>(b) * S;
    selected += static_cast<int64_t>(b) * S;
    int const count = stableDescendingRank(vals, S);
    int const s = blockIdx.x * blockDim.x + threadIdx.x;
    if (s < S)
        selected[s] = count < k ? 1 : 0;
}

static __device__ __forceinline__ void rankOrder(float const* vals, int* rank, int S)
{
    int const b = blockIdx.y;
    vals += static_cast<int64_t>(b) * S;
    rank += static_cast<int64_t>(b) * S;
    int const count = stableDescendingRank(vals, S);
    int const s = blockIdx.x * blockDim.x + threadIdx.x;
    if (s < S)
        rank[s] = count;
}

} // namespace edgemerge_detail
