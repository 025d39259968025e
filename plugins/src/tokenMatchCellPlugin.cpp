// TokenMatchCell plugin: metric [B, N, C] fp32 -> slot [B, N] int32, N = height * width.
#include "tokenMatchCellPlugin.h"

#include "tokenMatchCellKernel.h"

using namespace nvinfer1;

namespace edgemerge
{
namespace plugin
{

std::vector<PluginField> const& TokenMatchCellPlugin::fieldList()
{
    static std::vector<PluginField> const fields{
        PluginField("r", nullptr, PluginFieldType::kINT32, 1),
        PluginField("height", nullptr, PluginFieldType::kINT32, 1),
        PluginField("width", nullptr, PluginFieldType::kINT32, 1),
        PluginField("sy", nullptr, PluginFieldType::kINT32, 1),
        PluginField("sx", nullptr, PluginFieldType::kINT32, 1),
    };
    return fields;
}

TokenMatchCellPlugin* TokenMatchCellPlugin::create(PluginFieldCollection const* fc)
{
    Attributes a;
    int32_t* const slots[] = {&a.r, &a.height, &a.width, &a.sy, &a.sx};
    char const* const names[] = {"r", "height", "width", "sy", "sx"};
    bool seen[5] = {};
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        for (int32_t k = 0; k < 5; ++k)
        {
            if (fieldIs(fc->fields[i], names[k]))
            {
                *slots[k] = fieldInt(fc->fields[i]);
                seen[k] = true;
            }
        }
    }
    check(seen[0] && seen[1] && seen[2] && seen[3] && seen[4], "attributes r, height, width, sy and sx are required");
    check(a.height > 0 && a.width > 0 && a.sy > 0 && a.sx > 0 && a.height % a.sy == 0 && a.width % a.sx == 0,
        "the height x width grid must divide into sy x sx cells");
    check(a.r >= 0 && a.r <= a.height * a.width - (a.height / a.sy) * (a.width / a.sx),
        "r must be in [0, number of non-anchor tokens]");
    return new TokenMatchCellPlugin(a);
}

IPluginV3* TokenMatchCellPlugin::clone() noexcept
{
    try
    {
        return new TokenMatchCellPlugin(*this);
    }
    catch (std::exception const& e)
    {
        logError(std::string(name()) + "::clone: " + e.what());
    }
    return nullptr;
}

size_t TokenMatchCellPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t /*nbInputs*/,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    Dims const& d = inputs[0].max;
    return tokenMatchCellWorkspaceSize(static_cast<int32_t>(d.d[0]), static_cast<int32_t>(d.d[1]));
}

int32_t TokenMatchCellPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    try
    {
        Dims const& d = inputDesc[0].dims;
        check(d.nbDims == 3 && d.d[1] == mAttrs.height * mAttrs.width, "metric must be [B, height * width, C]");
        TokenMatchCellParams p;
        p.metric = static_cast<float const*>(inputs[0]);
        p.slot = static_cast<int32_t*>(outputs[0]);
        p.B = static_cast<int32_t>(d.d[0]);
        p.N = static_cast<int32_t>(d.d[1]);
        p.C = static_cast<int32_t>(d.d[2]);
        p.height = mAttrs.height;
        p.width = mAttrs.width;
        p.sy = mAttrs.sy;
        p.sx = mAttrs.sx;
        p.r = mAttrs.r;
        p.workspace = workspace;
        cudaError_t const err = launchTokenMatchCell(stream, p);
        check(err == cudaSuccess, std::string("kernel launch failed: ") + cudaGetErrorString(err));
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string(name()) + "::enqueue: " + e.what());
    }
    return -1;
}

PluginFieldCollection const* TokenMatchCellPlugin::getFieldsToSerialize() noexcept
{
    try
    {
        return setSerialFields({
            PluginField("r", &mAttrs.r, PluginFieldType::kINT32, 1),
            PluginField("height", &mAttrs.height, PluginFieldType::kINT32, 1),
            PluginField("width", &mAttrs.width, PluginFieldType::kINT32, 1),
            PluginField("sy", &mAttrs.sy, PluginFieldType::kINT32, 1),
            PluginField("sx", &mAttrs.sx, PluginFieldType::kINT32, 1),
        });
    }
    catch (...)
    {
        return nullptr;
    }
}

} // namespace plugin
} // namespace edgemerge
