// TokenMergeCell plugin: x [B, N, C], size [B, N, 1] (fp32 or fp16), slot [B, N] int32 in
// TokenMatchCell's layout, N = height * width -> merged [B, M, C], merged_size [B, M, 1] with
// M = num_out. Sums in fp32; O(N C): the cells are read from the grid, not searched in the slots.
#include "tokenMergeCellPlugin.h"

#include "tokenMergeCellKernel.h"

using namespace nvinfer1;

namespace edgemerge
{
namespace plugin
{

std::vector<PluginField> const& TokenMergeCellPlugin::fieldList()
{
    static std::vector<PluginField> const fields{
        PluginField("height", nullptr, PluginFieldType::kINT32, 1),
        PluginField("width", nullptr, PluginFieldType::kINT32, 1),
        PluginField("sy", nullptr, PluginFieldType::kINT32, 1),
        PluginField("sx", nullptr, PluginFieldType::kINT32, 1),
        PluginField("num_out", nullptr, PluginFieldType::kINT32, 1),
    };
    return fields;
}

TokenMergeCellPlugin* TokenMergeCellPlugin::create(PluginFieldCollection const* fc)
{
    Attributes a;
    int32_t* const slots[] = {&a.height, &a.width, &a.sy, &a.sx, &a.numOut};
    char const* const names[] = {"height", "width", "sy", "sx", "num_out"};
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
    check(seen[0] && seen[1] && seen[2] && seen[3] && seen[4], "attributes height, width, sy, sx and num_out are required");
    check(a.height > 0 && a.width > 0 && a.sy > 0 && a.sx > 0 && a.height % a.sy == 0 && a.width % a.sx == 0,
        "the height x width grid must divide into sy x sx cells");
    check(a.numOut >= (a.height / a.sy) * (a.width / a.sx) && a.numOut <= a.height * a.width,
        "num_out must be in [number of cells, height * width]");
    return new TokenMergeCellPlugin(a);
}

IPluginV3* TokenMergeCellPlugin::clone() noexcept
{
    try
    {
        return new TokenMergeCellPlugin(*this);
    }
    catch (std::exception const& e)
    {
        logError(std::string(name()) + "::clone: " + e.what());
    }
    return nullptr;
}

int32_t TokenMergeCellPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    try
    {
        Dims const& d = inputDesc[0].dims;
        check(d.nbDims == 3 && d.d[1] == mAttrs.height * mAttrs.width, "x must be [B, height * width, C]");
        check(outputDesc[0].dims.d[1] == mAttrs.numOut, "merged must be [B, num_out, C]");
        TokenMergeCellParams p;
        p.x = inputs[0];
        p.size = inputs[1];
        p.slot = static_cast<int32_t const*>(inputs[2]);
        p.merged = outputs[0];
        p.mergedSize = outputs[1];
        p.B = static_cast<int32_t>(d.d[0]);
        p.N = static_cast<int32_t>(d.d[1]);
        p.M = mAttrs.numOut;
        p.C = static_cast<int32_t>(d.d[2]);
        p.height = mAttrs.height;
        p.width = mAttrs.width;
        p.sy = mAttrs.sy;
        p.sx = mAttrs.sx;
        p.dtype = inputDesc[0].type == nvinfer1::DataType::kHALF ? edgemerge::DataType::kFLOAT16 : edgemerge::DataType::kFLOAT32;
        cudaError_t const err = launchTokenMergeCell(stream, p);
        check(err == cudaSuccess, std::string("kernel launch failed: ") + cudaGetErrorString(err));
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string(name()) + "::enqueue: " + e.what());
    }
    return -1;
}

PluginFieldCollection const* TokenMergeCellPlugin::getFieldsToSerialize() noexcept
{
    try
    {
        return setSerialFields({
            PluginField("height", &mAttrs.height, PluginFieldType::kINT32, 1),
            PluginField("width", &mAttrs.width, PluginFieldType::kINT32, 1),
            PluginField("sy", &mAttrs.sy, PluginFieldType::kINT32, 1),
            PluginField("sx", &mAttrs.sx, PluginFieldType::kINT32, 1),
            PluginField("num_out", &mAttrs.numOut, PluginFieldType::kINT32, 1),
        });
    }
    catch (...)
    {
        return nullptr;
    }
}

} // namespace plugin
} // namespace edgemerge
