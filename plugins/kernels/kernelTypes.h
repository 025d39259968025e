// Types shared by the edgemerge kernel launchers (host side, no CUDA device code).
#pragma once

#include <cstddef>
#include <cstdint>

namespace edgemerge
{

//! Element type of the `x`/`size`/`merged` tensors (match ops always take fp32 metrics).
enum class DataType : int32_t
{
    kFLOAT32 = 0,
    kFLOAT16 = 1,
};

//! Round a workspace sub-buffer up to 256 bytes so every part stays aligned.
inline size_t alignWorkspace(size_t bytes)
{
    return (bytes + 255) / 256 * 256;
}

} // namespace edgemerge
