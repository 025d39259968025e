// TensorRT IPluginV3 for TokenMergeCell (docs/ops.md): TokenMerge's I/O, types and shapes
// (merged [B, num_out, C], merged_size [B, num_out, 1]), the grid attributes besides num_out.
#pragma once

#include "tokenMergePlugin.h"

namespace edgemerge
{
namespace plugin
{

class TokenMergeCellPlugin : public TokenMergePlugin
{
public:
    struct Attributes
    {
        int32_t height{};
        int32_t width{};
        int32_t sy{};
        int32_t sx{};
        int32_t numOut{};
    };

    static char const* name() noexcept { return "TokenMergeCell"; }
    static std::vector<nvinfer1::PluginField> const& fieldList();
    static TokenMergeCellPlugin* create(nvinfer1::PluginFieldCollection const* fc);

    explicit TokenMergeCellPlugin(Attributes attrs)
        : TokenMergePlugin(attrs.numOut)
        , mAttrs(attrs)
    {
    }

    nvinfer1::IPluginV3* clone() noexcept override;
    char const* getPluginName() const noexcept override { return name(); }

    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    Attributes mAttrs;
};

} // namespace plugin
} // namespace edgemerge
