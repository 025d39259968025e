// TokenMerge plugin: x [B, N, C], size [B, N, 1] (fp32 or fp16), slot [B, N] int32
// -> merged [B, M, C], merged_size [B, M, 1] with M = num_out. Sums in fp32.
#include "tokenMergePlugin.h"

#include "tokenMergeKernel.h"

using namespace nvinfer1;

namespace edgemerge
{
namespace plugin
{

std::vector<PluginField> const& TokenMergePlugin::fieldList()
{
    static std::vector<PluginField> const fields{
        PluginField("num_out", nullptr, PluginFieldType::kINT32, 1),
    };
    return fields;
}

TokenMergePlugin* TokenMergePlugin::create(PluginFieldCollection const* fc)
{
    int32_t numOut = -1;
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        if (fieldIs(fc->fields[i], "num_out"))
            numOut = fieldInt(fc->fields[i]);
    }
    check(numOut > 0, "attribute num_out (> 0) is required");
    return new TokenMergePlugin(numOut);
}

IPluginV3* TokenMergePlugin::clone() noexcept
{
    try
    {
        return new TokenMergePlugin(*this);
    }
    catch (std::exception const& e)
    {
        logError(std::string(name()) + "::clone: " + e.what());
    }
    return nullptr;
}

int32_t TokenMergePlugin::getOutputDataTypes(
    nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != 3 || nbOutputs != 2)
        return -1;
    outputTypes[0] = inputTypes[0];
    outputTypes[1] = inputTypes[0];
    return 0;
}

int32_t TokenMergePlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
    IExprBuilder& exprBuilder) noexcept
{
    try
    {
        check(nbInputs == 3 && nbOutputs == 2, "expects inputs (x, size, slot) and outputs (merged, merged_size)");
        check(inputs[0].nbDims == 3 && inputs[1].nbDims == 3 && inputs[2].nbDims == 2,
            "x must be [B, N, C], size [B, N, 1], slot [B, N]");
        IDimensionExpr const* m = exprBuilder.constant(mNumOut);
        outputs[0].nbDims = 3;
        outputs[0].d[0] = inputs[0].d[0];
        outputs[0].d[1] = m;
        outputs[0].d[2] = inputs[0].d[2];
        outputs[1].nbDims = 3;
        outputs[1].d[0] = inputs[0].d[0];
        outputs[1].d[1] = m;
        outputs[1].d[2] = exprBuilder.constant(1);
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string(name()) + "::getOutputShapes: " + e.what());
    }
    return -1;
}

bool TokenMergePlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != 3 || nbOutputs != 2 || pos < 0 || pos > 4)
        return false;
    PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR)
        return false;
    if (pos == 0)
        return d.type == nvinfer1::DataType::kFLOAT || d.type == nvinfer1::DataType::kHALF;
    if (pos == 2)
        return d.type == nvinfer1::DataType::kINT32;
    return d.type == inOut[0].desc.type; // size, merged, merged_size follow x
}

int32_t TokenMergePlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    try
    {
        Dims const& d = inputDesc[0].dims;
        check(d.nbDims == 3, "x must be [B, N, C]");
        check(outputDesc[0].dims.d[1] == mNumOut, "merged must be [B, num_out, C]");
        TokenMergeParams p;
        p.x = inputs[0];
        p.size = inputs[1];
        p.slot = static_cast<int32_t const*>(inputs[2]);
        p.merged = outputs[0];
        p.mergedSize = outputs[1];
        p.B = static_cast<int32_t>(d.d[0]);
        p.N = static_cast<int32_t>(d.d[1]);
        p.M = mNumOut;
        p.C = static_cast<int32_t>(d.d[2]);
        p.dtype = inputDesc[0].type == nvinfer1::DataType::kHALF ? edgemerge::DataType::kFLOAT16 : edgemerge::DataType::kFLOAT32;
        cudaError_t const err = launchTokenMerge(stream, p);
        check(err == cudaSuccess, std::string("kernel launch failed: ") + cudaGetErrorString(err));
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string(name()) + "::enqueue: " + e.what());
    }
    return -1;
}

PluginFieldCollection const* TokenMergePlugin::getFieldsToSerialize() noexcept
{
    try
    {
        return setSerialFields({PluginField("num_out", &mNumOut, PluginFieldType::kINT32, 1)});
    }
    catch (...)
    {
        return nullptr;
    }
}

} // namespace plugin
} // namespace edgemerge
