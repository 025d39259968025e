// TokenMerge kernels (docs/ops.md): merged_size[j] = sum_{slot_i = j} size_i,
// merged[j] = sum_{slot_i = j} size_i * x_i / merged_size[j] (0 where the sum is 0), fp32 sums.
//
// Determinism: one thread block per (b, output slot j) scans slot[b, 0..N) in index order,
// compacts the matching positions with a block scan (order preserved) and accumulates them in
// that order, each thread owning a fixed set of channels (accumulators in shared memory). No
// float atomics, so results are bitwise reproducible.
// Cost: every block reads the whole slot row, O(B * M * N) int32 reads (the row is N * 4 bytes,
// 32 KB at N = 8192, and stays in L1/L2), plus O(B * N * C) reads of x and size. At N = 8192,
// M ~ 3300 that is ~27M L2-resident int reads per image. A counting-sort inverse index
// (count, scan, stable fill) would make it O(B * N); not needed at these sizes.
#include "common.cuh"
#include "tokenMergeKernel.h"

using namespace edgemerge_detail;

namespace
{
constexpr int kMergeBlock = 128;

// block kMergeBlock, grid (M, B), dynamic shared memory: C floats + kMergeBlock ints.
template <typename T>
__device__ __forceinline__ void tokenMergeBody(T const* x, T const* size, int const* slot, T* merged,
    T* mergedSize, int N, int M, int C)
{
    extern __shared__ float shMem[];
    float* acc = shMem;                                 // [C]
    int* idxBuf = reinterpret_cast<int*>(shMem + C);    // [blockDim.x]
    __shared__ int shWarp[32];
    __shared__ float sizeAcc;

    int const j = blockIdx.x;
    int const b = blockIdx.y;
    int const tid = threadIdx.x;
    int const* slotRow = slot + static_cast<int64_t>(b) * N;
    T const* xb = x + static_cast<int64_t>(b) * N * C;
    T const* sb = size + static_cast<int64_t>(b) * N;

    for (int c = tid; c < C; c += blockDim.x)
        acc[c] = 0.f;
    if (tid == 0)
        sizeAcc = 0.f;
    __syncthreads();

    for (int i0 = 0; i0 < N; i0 += blockDim.x)
    {
        int const i = i0 + tid;
        int const match = (i < N && slotRow[i] == j) ? 1 : 0;
        int total = 0;
        int const excl = blockExclusiveScan(match, shWarp, total);
        if (match)
            idxBuf[excl] = i;
        __syncthreads();
        for (int t = 0; t < total; ++t) // positions in ascending index order
        {
            int const src = idxBuf[t];
            float const w = toFloat(sb[src]);
            T const* xr = xb + static_cast<int64_t>(src) * C;
            for (int c = tid; c < C; c += blockDim.x)
                acc[c] += w * toFloat(xr[c]);
            if (tid == 0)
                sizeAcc += w;
        }
        __syncthreads(); // idxBuf is rewritten by the next chunk
    }

    float const s = sizeAcc;
    T* out = merged + (static_cast<int64_t>(b) * M + j) * C;
    for (int c = tid; c < C; c += blockDim.x)
        out[c] = fromFloat<T>(s != 0.f ? acc[c] / s : 0.f);
    if (tid == 0)
        mergedSize[static_cast<int64_t>(b) * M + j] = fromFloat<T>(s);
}
} // namespace

extern "C" __global__ void em_token_merge_f32(float const* x, float const* size, int const* slot, float* merged,
    float* mergedSize, int N, int M, int C)
{
    tokenMergeBody<float>(x, size, slot, merged, mergedSize, N, M, C);
}

extern "C" __global__ void em_token_merge_f16(__half const* x, __half const* size, int const* slot, __half* merged,
    __half* mergedSize, int N, int M, int C)
{
    tokenMergeBody<__half>(x, size, slot, merged, mergedSize, N, M, C);
}

namespace edgemerge
{

//! Dynamic shared memory of one em_token_merge_* block (C floats + kMergeBlock ints).
size_t tokenMergeSharedBytes(int32_t C)
{
    return sizeof(float) * static_cast<size_t>(C) + sizeof(int) * kMergeBlock;
}

cudaError_t launchTokenMerge(cudaStream_t stream, TokenMergeParams const& p)
{
    if (p.B < 0 || p.N < 0 || p.M <= 0 || p.C <= 0 || p.x == nullptr || p.size == nullptr || p.slot == nullptr
        || p.merged == nullptr || p.mergedSize == nullptr)
    {
        return cudaErrorInvalidValue;
    }
    if (p.B == 0)
        return cudaSuccess;
    size_t const shBytes = tokenMergeSharedBytes(p.C);
    if (shBytes > 48 * 1024)
        return cudaErrorInvalidValue; // C > ~12000 channels: would need an opt-in carve-out
    dim3 const grid(p.M, p.B);
    if (p.dtype == DataType::kFLOAT32)
    {
        em_token_merge_f32<<<grid, kMergeBlock, shBytes, stream>>>(static_cast<float const*>(p.x),
            static_cast<float const*>(p.size), p.slot, static_cast<float*>(p.merged),
            static_cast<float*>(p.mergedSize), p.N, p.M, p.C);
    }
    else
    {
        em_token_merge_f16<<<grid, kMergeBlock, shBytes, stream>>>(static_cast<__half const*>(p.x),
            static_cast<__half const*>(p.size), p.slot, static_cast<__half*>(p.merged),
            static_cast<__half*>(p.mergedSize), p.N, p.M, p.C);
    }
    return cudaGetLastError();
}

} // namespace edgemerge
