// TensorRT IPluginV3 for TokenMatchBipartite (docs/ops.md).
#pragma once

#include "pluginCommon.h"

namespace edgemerge
{
namespace plugin
{

class TokenMatchBipartitePlugin : public MatchPluginBase
{
public:
    struct Attributes
    {
        int32_t r{};
        std::vector<int32_t> src;
        std::vector<int32_t> dst;
        int32_t protect{};
    };

    static char const* name() noexcept { return "TokenMatchBipartite"; }
    static std::vector<nvinfer1::PluginField> const& fieldList();
    static TokenMatchBipartitePlugin* create(nvinfer1::PluginFieldCollection const* fc);

    explicit TokenMatchBipartitePlugin(Attributes attrs);
    TokenMatchBipartitePlugin(TokenMatchBipartitePlugin const& other);
    TokenMatchBipartitePlugin& operator=(TokenMatchBipartitePlugin const&) = delete;
    ~TokenMatchBipartitePlugin() override;

    nvinfer1::IPluginV3* clone() noexcept override;
    char const* getPluginName() const noexcept override { return name(); }

    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    void uploadPositions(); // src then dst positions to mDevPos (synchronous, once per context)

    Attributes mAttrs;
    int32_t* mDevPos{nullptr};
};

} // namespace plugin
} // namespace edgemerge
