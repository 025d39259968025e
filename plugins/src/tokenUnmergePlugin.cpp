// TokenUnmerge plugin: merged [B, M, C] (fp32 or fp16), slot [B, N] int32 -> x [B, N, C].
#include "tokenUnmergePlugin.h"

#include "tokenUnmergeKernel.h"

using namespace nvinfer1;

namespace edgemerge
{
namespace plugin
{

std::vector<PluginField> const& TokenUnmergePlugin::fieldList()
{
    // No attributes besides plugin_namespace (accepted and ignored).
    static std::vector<PluginField> const fields{};
    return fields;
}

TokenUnmergePlugin* TokenUnmergePlugin::create(PluginFieldCollection const* /*fc*/)
{
    return new TokenUnmergePlugin();
}

IPluginV3* TokenUnmergePlugin::clone() noexcept
{
    try
    {
        return new TokenUnmergePlugin(*this);
    }
    catch (std::exception const& e)
    {
        logError(std::string(name()) + "::clone: " + e.what());
    }
    return nullptr;
}

int32_t TokenUnmergePlugin::getOutputDataTypes(
    nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != 2 || nbOutputs != 1)
        return -1;
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t TokenUnmergePlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
    IExprBuilder& /*exprBuilder*/) noexcept
{
    try
    {
        check(nbInputs == 2 && nbOutputs == 1, "expects inputs (merged, slot) and one output");
        check(inputs[0].nbDims == 3 && inputs[1].nbDims == 2, "merged must be [B, M, C], slot [B, N]");
        outputs[0].nbDims = 3;
        outputs[0].d[0] = inputs[0].d[0];
        outputs[0].d[1] = inputs[1].d[1];
        outputs[0].d[2] = inputs[0].d[2];
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string(name()) + "::getOutputShapes: " + e.what());
    }
    return -1;
}

bool TokenUnmergePlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != 2 || nbOutputs != 1 || pos < 0 || pos > 2)
        return false;
    PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR)
        return false;
    if (pos == 0)
        return d.type == nvinfer1::DataType::kFLOAT || d.type == nvinfer1::DataType::kHALF;
    if (pos == 1)
        return d.type == nvinfer1::DataType::kINT32;
    return d.type == inOut[0].desc.type;
}

int32_t TokenUnmergePlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    try
    {
        Dims const& m = inputDesc[0].dims;
        Dims const& s = inputDesc[1].dims;
        check(m.nbDims == 3 && s.nbDims == 2 && m.d[0] == s.d[0], "merged must be [B, M, C], slot [B, N]");
        TokenUnmergeParams p;
        p.merged = inputs[0];
        p.slot = static_cast<int32_t const*>(inputs[1]);
        p.x = outputs[0];
        p.B = static_cast<int32_t>(m.d[0]);
        p.M = static_cast<int32_t>(m.d[1]);
        p.C = static_cast<int32_t>(m.d[2]);
        p.N = static_cast<int32_t>(s.d[1]);
        p.dtype = inputDesc[0].type == nvinfer1::DataType::kHALF ? edgemerge::DataType::kFLOAT16 : edgemerge::DataType::kFLOAT32;
        cudaError_t const err = launchTokenUnmerge(stream, p);
        check(err == cudaSuccess, std::string("kernel launch failed: ") + cudaGetErrorString(err));
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string(name()) + "::enqueue: " + e.what());
    }
    return -1;
}

PluginFieldCollection const* TokenUnmergePlugin::getFieldsToSerialize() noexcept
{
    return setSerialFields({});
}

} // namespace plugin
} // namespace edgemerge
