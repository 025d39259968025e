// TokenUnmerge kernels (docs/ops.md): a pure gather, trivially deterministic.
// One thread per output element, grid-stride; launch block 256, any grid.
#include "common.cuh"
#include "tokenUnmergeKernel.h"

using namespace edgemerge_detail;

namespace
{
template <typename T>
__device__ __forceinline__ void tokenUnmergeBody(T const* merged, int const* slot, T* x, int B, int N, int M, int C)
{
    int64_t const total = static_cast<int64_t>(B) * N * C;
    for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
         e += static_cast<int64_t>(gridDim.x) * blockDim.x)
    {
        int64_t const row = e / C; // b * N + i
        int const c = static_cast<int>(e - row * C);
        int const b = static_cast<int>(row / N);
        int const j = slot[row];
        x[e] = (j >= 0 && j < M) ? merged[(static_cast<int64_t>(b) * M + j) * C + c] : fromFloat<T>(0.f);
    }
}
} // namespace

extern "C" __global__ void em_token_unmerge_f32(float const* merged, int const* slot, float* x, int B, int N, int M, int C)
{
    tokenUnmergeBody<float>(merged, slot, x, B, N, M, C);
}

extern "C" __global__ void em_token_unmerge_f16(
    __half const* merged, int const* slot, __half* x, int B, int N, int M, int C)
{
    tokenUnmergeBody<__half>(merged, slot, x, B, N, M, C);
}

namespace edgemerge
{

cudaError_t launchTokenUnmerge(cudaStream_t stream, TokenUnmergeParams const& p)
{
    if (p.B < 0 || p.N < 0 || p.M <= 0 || p.C <= 0 || p.merged == nullptr || p.slot == nullptr || p.x == nullptr)
        return cudaErrorInvalidValue;
    int64_t const total = static_cast<int64_t>(p.B) * p.N * p.C;
    if (total == 0)
        return cudaSuccess;
    int64_t const blocks64 = (total + 255) / 256;
    int const blocks = static_cast<int>(blocks64 < 65535 * 8 ? blocks64 : 65535 * 8);
    if (p.dtype == DataType::kFLOAT32)
    {
        em_token_unmerge_f32<<<blocks, 256, 0, stream>>>(static_cast<float const*>(p.merged), p.slot,
            static_cast<float*>(p.x), p.B, p.N, p.M, p.C);
    }
    else
    {
        em_token_unmerge_f16<<<blocks, 256, 0, stream>>>(static_cast<__half const*>(p.merged), p.slot,
            static_cast<__half*>(p.x), p.B, p.N, p.M, p.C);
    }
    return cudaGetLastError();
}

} // namespace edgemerge
