// TensorRT IPluginV3 for TokenMerge (docs/ops.md).
#pragma once

#include "pluginCommon.h"

namespace edgemerge
{
namespace plugin
{

class TokenMergePlugin : public PluginBase
{
public:
    static char const* name() noexcept { return "TokenMerge"; }
    static std::vector<nvinfer1::PluginField> const& fieldList();
    static TokenMergePlugin* create(nvinfer1::PluginFieldCollection const* fc);

    explicit TokenMergePlugin(int32_t numOut)
        : mNumOut(numOut)
    {
    }

    nvinfer1::IPluginV3* clone() noexcept override;
    char const* getPluginName() const noexcept override { return name(); }

    int32_t getNbOutputs() const noexcept override { return 2; }
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;

    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    int32_t mNumOut;
};

} // namespace plugin
} // namespace edgemerge
