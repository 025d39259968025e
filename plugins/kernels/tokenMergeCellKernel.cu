// TokenMergeCell kernel (docs/ops.md): TokenMerge on TokenMatchCell's slots without searching the
// slot row. With A = (height / sy) * (width / sx) cells and K = M - A:
//   - a kept token p (0 <= slot_p < K) is output slot_p alone: size_p * x_p / size_p;
//   - cell c's output K + c sums the tokens of its own sy x sx cell whose slot is >= K.
// One launch, no scratch: grid (N + A, B), block kMergeCellBlock; block i < N handles token i (it
// returns at once unless kept), block N + c handles cell c, each thread a fixed set of channels.
// Sums in fp32, in position order inside a cell (row by row), which is TokenMerge's kernel order
// (tokenMergeKernel.cu: ascending position).
// No atomics: bitwise reproducible. Cost O(B * N * C) reads and O(B * M * C) writes.
#include "common.cuh"
#include "tokenMergeCellKernel.h"

using namespace edgemerge_detail;

namespace
{
constexpr int kMergeCellBlock = 128;

// block kMergeCellBlock, grid (N + (height / sy) * (width / sx), B), no dynamic shared memory.
template <typename T>
__device__ __forceinline__ void tokenMergeCellBody(T const* x, T const* size, int const* slot, T* merged,
    T* mergedSize, int N, int M, int C, int height, int width, int sy, int sx)
{
    int const cols = width / sx;
    int const K = M - (height / sy) * cols;
    int const b = blockIdx.y;
    int const* slotRow = slot + static_cast<int64_t>(b) * N;
    T const* xb = x + static_cast<int64_t>(b) * N * C;
    T const* sb = size + static_cast<int64_t>(b) * N;
    int j = 0;          // the output slot this block writes
    float total = 0.f;  // its size
    if (static_cast<int>(blockIdx.x) < N)
    {
        int const p = blockIdx.x;
        j = slotRow[p];
        if (j < 0 || j >= K)
            return; // grouped: written by its cell's block
        total = toFloat(sb[p]);
        T const* xr = xb + static_cast<int64_t>(p) * C;
        T* out = merged + (static_cast<int64_t>(b) * M + j) * C;
        for (int c = threadIdx.x; c < C; c += blockDim.x)
        {
            float const acc = total * toFloat(xr[c]);
            out[c] = fromFloat<T>(total != 0.f ? acc / total : 0.f);
        }
    }
    else
    {
        int const cell = blockIdx.x - N;
        int const row0 = (cell / cols) * sy;
        int const col0 = (cell % cols) * sx;
        j = K + cell;
        for (int dy = 0; dy < sy; ++dy) // the cell's size, the same order as the channel sums
            for (int dx = 0; dx < sx; ++dx)
            {
                int const p = (row0 + dy) * width + col0 + dx;
                if (slotRow[p] >= K)
                    total += toFloat(sb[p]);
            }
        T* out = merged + (static_cast<int64_t>(b) * M + j) * C;
        for (int c = threadIdx.x; c < C; c += blockDim.x)
        {
            float acc = 0.f;
            for (int dy = 0; dy < sy; ++dy)
                for (int dx = 0; dx < sx; ++dx)
                {
                    int const p = (row0 + dy) * width + col0 + dx;
                    if (slotRow[p] >= K)
                        acc += toFloat(sb[p]) * toFloat(xb[static_cast<int64_t>(p) * C + c]);
                }
            out[c] = fromFloat<T>(total != 0.f ? acc / total : 0.f);
        }
    }
    if (threadIdx.x == 0)
        mergedSize[static_cast<int64_t>(b) * M + j] = fromFloat<T>(total);
}
} // namespace

extern "C" __global__ void em_token_merge_cell_f32(float const* x, float const* size, int const* slot,
    float* merged, float* mergedSize, int N, int M, int C, int height, int width, int sy, int sx)
{
    tokenMergeCellBody<float>(x, size, slot, merged, mergedSize, N, M, C, height, width, sy, sx);
}

extern "C" __global__ void em_token_merge_cell_f16(__half const* x, __half const* size, int const* slot,
    __half* merged, __half* mergedSize, int N, int M, int C, int height, int width, int sy, int sx)
{
    tokenMergeCellBody<__half>(x, size, slot, merged, mergedSize, N, M, C, height, width, sy, sx);
}

namespace edgemerge
{

cudaError_t launchTokenMergeCell(cudaStream_t stream, TokenMergeCellParams const& p)
{
    if (p.B < 0 || p.C <= 0 || p.height <= 0 || p.width <= 0 || p.sy <= 0 || p.sx <= 0 || p.height % p.sy != 0
        || p.width % p.sx != 0 || p.N != p.height * p.width || p.M < (p.height / p.sy) * (p.width / p.sx)
        || p.M > p.N || p.x == nullptr || p.size == nullptr || p.slot == nullptr || p.merged == nullptr
        || p.mergedSize == nullptr)
    {
        return cudaErrorInvalidValue;
    }
    if (p.B == 0)
        return cudaSuccess;
    dim3 const grid(p.N + (p.height / p.sy) * (p.width / p.sx), p.B);
    if (p.dtype == DataType::kFLOAT32)
    {
        em_token_merge_cell_f32<<<grid, kMergeCellBlock, 0, stream>>>(static_cast<float const*>(p.x),
            static_cast<float const*>(p.size), p.slot, static_cast<float*>(p.merged),
            static_cast<float*>(p.mergedSize), p.N, p.M, p.C, p.height, p.width, p.sy, p.sx);
    }
    else
    {
        em_token_merge_cell_f16<<<grid, kMergeCellBlock, 0, stream>>>(static_cast<__half const*>(p.x),
            static_cast<__half const*>(p.size), p.slot, static_cast<__half*>(p.merged),
            static_cast<__half*>(p.mergedSize), p.N, p.M, p.C, p.height, p.width, p.sy, p.sx);
    }
    return cudaGetLastError();
}

} // namespace edgemerge
