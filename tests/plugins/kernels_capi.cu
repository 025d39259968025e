// Test-only C API over the edgemerge kernel launchers, for ctypes: raw device pointers + ints,
// returns the cudaError_t as int (0 = success). Runs on the legacy default stream; callers
// synchronise. Built by tests/plugins/conftest.py::build_capi with nvcc -shared -Xcompiler -fPIC.
#include "tokenMatchBipartiteKernel.h"
#include "tokenMatchCellKernel.h"
#include "tokenMatchWindowKernel.h"
#include "tokenMergeCellKernel.h"
#include "tokenMergeKernel.h"
#include "tokenUnmergeKernel.h"

using namespace edgemerge;

extern "C"
{

size_t em_capi_match_bipartite_workspace(int B, int N, int C, int S)
{
    return tokenMatchBipartiteWorkspaceSize(B, N, C, S);
}

int em_capi_match_bipartite(float const* metric, int* slot, int const* srcPos, int const* dstPos, int B, int N,
    int C, int S, int D, int r, int protect, void* workspace)
{
    TokenMatchBipartiteParams p;
    p.metric = metric;
    p.slot = slot;
    p.srcPos = srcPos;
    p.dstPos = dstPos;
    p.B = B;
    p.N = N;
    p.C = C;
    p.S = S;
    p.D = D;
    p.r = r;
    p.protect = protect;
    p.workspace = workspace;
    return static_cast<int>(launchTokenMatchBipartite(nullptr, p));
}

size_t em_capi_match_cell_workspace(int B, int N)
{
    return tokenMatchCellWorkspaceSize(B, N);
}

int em_capi_match_cell(float const* metric, int* slot, int B, int N, int C, int height, int width, int sy, int sx,
    int r, void* workspace)
{
    TokenMatchCellParams p;
    p.metric = metric;
    p.slot = slot;
    p.B = B;
    p.N = N;
    p.C = C;
    p.height = height;
    p.width = width;
    p.sy = sy;
    p.sx = sx;
    p.r = r;
    p.workspace = workspace;
    return static_cast<int>(launchTokenMatchCell(nullptr, p));
}

size_t em_capi_match_window_workspace(int B, int N, int C, int height, int width)
{
    return tokenMatchWindowWorkspaceSize(B, N, C, height, width);
}

int em_capi_match_window(float const* metric, int* slot, int B, int N, int C, int height, int width, int k,
    int protect, void* workspace)
{
    TokenMatchWindowParams p;
    p.metric = metric;
    p.slot = slot;
    p.B = B;
    p.N = N;
    p.C = C;
    p.height = height;
    p.width = width;
    p.k = k;
    p.protect = protect;
    p.workspace = workspace;
    return static_cast<int>(launchTokenMatchWindow(nullptr, p));
}

// dtype: 0 = float32, 1 = float16
int em_capi_token_merge(void const* x, void const* size, int const* slot, void* merged, void* mergedSize, int B,
    int N, int M, int C, int dtype)
{
    TokenMergeParams p;
    p.x = x;
    p.size = size;
    p.slot = slot;
    p.merged = merged;
    p.mergedSize = mergedSize;
    p.B = B;
    p.N = N;
    p.M = M;
    p.C = C;
    p.dtype = dtype == 1 ? DataType::kFLOAT16 : DataType::kFLOAT32;
    return static_cast<int>(launchTokenMerge(nullptr, p));
}

int em_capi_token_merge_cell(void const* x, void const* size, int const* slot, void* merged, void* mergedSize,
    int B, int N, int M, int C, int height, int width, int sy, int sx, int dtype)
{
    TokenMergeCellParams p;
    p.x = x;
    p.size = size;
    p.slot = slot;
    p.merged = merged;
    p.mergedSize = mergedSize;
    p.B = B;
    p.N = N;
    p.M = M;
    p.C = C;
    p.height = height;
    p.width = width;
    p.sy = sy;
    p.sx = sx;
    p.dtype = dtype == 1 ? DataType::kFLOAT16 : DataType::kFLOAT32;
    return static_cast<int>(launchTokenMergeCell(nullptr, p));
}

int em_capi_token_unmerge(void const* merged, int const* slot, void* x, int B, int N, int M, int C, int dtype)
{
    TokenUnmergeParams p;
    p.merged = merged;
    p.slot = slot;
    p.x = x;
    p.B = B;
    p.N = N;
    p.M = M;
    p.C = C;
    p.dtype = dtype == 1 ? DataType::kFLOAT16 : DataType::kFLOAT32;
    return static_cast<int>(launchTokenUnmerge(nullptr, p));
}

} // extern "C"
