// TensorRT IPluginV3 for TokenMatchCell (docs/ops.md).
#pragma once

#include "pluginCommon.h"

namespace edgemerge
{
namespace plugin
{

class TokenMatchCellPlugin : public MatchPluginBase
{
public:
    struct Attributes
    {
        int32_t r{};
        int32_t height{};
        int32_t width{};
        int32_t sy{};
        int32_t sx{};
    };

    static char const* name() noexcept { return "TokenMatchCell"; }
    static std::vector<nvinfer1::PluginField> const& fieldList();
    static TokenMatchCellPlugin* create(nvinfer1::PluginFieldCollection const* fc);

    explicit TokenMatchCellPlugin(Attributes attrs)
        : mAttrs(attrs)
    {
    }

    nvinfer1::IPluginV3* clone() noexcept override;
    char const* getPluginName() const noexcept override { return name(); }

    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    Attributes mAttrs;
};

} // namespace plugin
} // namespace edgemerge
