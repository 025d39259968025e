// TokenMatchWindow plugin: metric [B, N, C] fp32 -> slot [B, N] int32, N = protect + height * width.
#include "tokenMatchWindowPlugin.h"

#include "tokenMatchWindowKernel.h"

using namespace nvinfer1;

namespace edgemerge
{
namespace plugin
{

std::vector<PluginField> const& TokenMatchWindowPlugin::fieldList()
{
    static std::vector<PluginField> const fields{
        PluginField("height", nullptr, PluginFieldType::kINT32, 1),
        PluginField("width", nullptr, PluginFieldType::kINT32, 1),
        PluginField("k", nullptr, PluginFieldType::kINT32, 1),
        PluginField("protect", nullptr, PluginFieldType::kINT32, 1),
    };
    return fields;
}

TokenMatchWindowPlugin* TokenMatchWindowPlugin::create(PluginFieldCollection const* fc)
{
    Attributes a;
    bool hasH = false, hasW = false, hasK = false;
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        if (fieldIs(f, "height"))
        {
            a.height = fieldInt(f);
            hasH = true;
        }
        else if (fieldIs(f, "width"))
        {
            a.width = fieldInt(f);
            hasW = true;
        }
        else if (fieldIs(f, "k"))
        {
            a.k = fieldInt(f);
            hasK = true;
        }
        else if (fieldIs(f, "protect"))
            a.protect = fieldInt(f);
    }
    check(hasH && hasW && hasK, "attributes height, width and k are required");
    check(a.height > 0 && a.width > 0 && a.height % 2 == 0 && a.width % 2 == 0, "height and width must be even and > 0");
    check(a.protect >= 0, "protect must be >= 0");
    check(a.k >= 0 && a.k <= (a.height / 2) * (a.width / 2), "k must be in [0, number of 2x2 windows]");
    return new TokenMatchWindowPlugin(a);
}

IPluginV3* TokenMatchWindowPlugin::clone() noexcept
{
    try
    {
        return new TokenMatchWindowPlugin(*this);
    }
    catch (std::exception const& e)
    {
        logError(std::string(name()) + "::clone: " + e.what());
    }
    return nullptr;
}

size_t TokenMatchWindowPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t /*nbInputs*/,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    Dims const& d = inputs[0].max;
    return tokenMatchWindowWorkspaceSize(static_cast<int32_t>(d.d[0]), static_cast<int32_t>(d.d[1]),
        static_cast<int32_t>(d.d[2]), mAttrs.height, mAttrs.width);
}

int32_t TokenMatchWindowPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    try
    {
        Dims const& d = inputDesc[0].dims;
        check(d.nbDims == 3 && d.d[1] == mAttrs.protect + mAttrs.height * mAttrs.width,
            "metric must be [B, protect + height * width, C]");
        TokenMatchWindowParams p;
        p.metric = static_cast<float const*>(inputs[0]);
        p.slot = static_cast<int32_t*>(outputs[0]);
        p.B = static_cast<int32_t>(d.d[0]);
        p.N = static_cast<int32_t>(d.d[1]);
        p.C = static_cast<int32_t>(d.d[2]);
        p.height = mAttrs.height;
        p.width = mAttrs.width;
        p.k = mAttrs.k;
        p.protect = mAttrs.protect;
        p.workspace = workspace;
        cudaError_t const err = launchTokenMatchWindow(stream, p);
        check(err == cudaSuccess, std::string("kernel launch failed: ") + cudaGetErrorString(err));
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string(name()) + "::enqueue: " + e.what());
    }
    return -1;
}

PluginFieldCollection const* TokenMatchWindowPlugin::getFieldsToSerialize() noexcept
{
    try
    {
        return setSerialFields({
            PluginField("height", &mAttrs.height, PluginFieldType::kINT32, 1),
            PluginField("width", &mAttrs.width, PluginFieldType::kINT32, 1),
            PluginField("k", &mAttrs.k, PluginFieldType::kINT32, 1),
            PluginField("protect", &mAttrs.protect, PluginFieldType::kINT32, 1),
        });
    }
    catch (...)
    {
        return nullptr;
    }
}

} // namespace plugin
} // namespace edgemerge
