// TokenMatchBipartite plugin: metric [B, N, C] fp32 -> slot [B, N] int32 (docs/ops.md).
// The src/dst position lists are attributes; each execution context gets a device copy in
// attachToContext (a plain cudaMalloc + cudaMemcpy outside enqueue, so enqueue stays
// graph-capturable).
#include "tokenMatchBipartitePlugin.h"

#include "tokenMatchBipartiteKernel.h"

#include <cuda_runtime_api.h>

using namespace nvinfer1;

namespace edgemerge
{
namespace plugin
{

std::vector<PluginField> const& TokenMatchBipartitePlugin::fieldList()
{
    static std::vector<PluginField> const fields{
        PluginField("r", nullptr, PluginFieldType::kINT32, 1),
        PluginField("src", nullptr, PluginFieldType::kINT32, 0),
        PluginField("dst", nullptr, PluginFieldType::kINT32, 0),
        PluginField("protect", nullptr, PluginFieldType::kINT32, 1),
    };
    return fields;
}

TokenMatchBipartitePlugin* TokenMatchBipartitePlugin::create(PluginFieldCollection const* fc)
{
    Attributes a;
    bool hasR = false, hasSrc = false, hasDst = false;
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        if (fieldIs(f, "r"))
        {
            a.r = fieldInt(f);
            hasR = true;
        }
        else if (fieldIs(f, "src"))
        {
            a.src = fieldInts(f);
            hasSrc = true;
        }
        else if (fieldIs(f, "dst"))
        {
            a.dst = fieldInts(f);
            hasDst = true;
        }
        else if (fieldIs(f, "protect"))
            a.protect = fieldInt(f);
        // plugin_namespace and anything else: ignored
    }
    check(hasR && hasSrc && hasDst, "attributes r, src and dst are required");
    int32_t const S = static_cast<int32_t>(a.src.size());
    int32_t const D = static_cast<int32_t>(a.dst.size());
    int32_t const N = S + D;
    check(D > 0, "dst must not be empty");
    check(a.protect >= 0 && a.protect <= S, "protect must be in [0, len(src)]");
    check(a.r >= 0 && a.r <= S - a.protect, "r must be in [0, len(src) - protect]");
    std::vector<char> seen(static_cast<size_t>(N), 0);
    for (auto const* list : {&a.src, &a.dst})
    {
        for (size_t i = 0; i < list->size(); ++i)
        {
            int32_t const p = (*list)[i];
            check(p >= 0 && p < N, "src/dst positions must lie in [0, len(src) + len(dst))");
            check(i == 0 || (*list)[i - 1] < p, "src and dst must be strictly ascending");
            check(!seen[static_cast<size_t>(p)], "a position is in both src and dst");
            seen[static_cast<size_t>(p)] = 1;
        }
    }
    return new TokenMatchBipartitePlugin(std::move(a));
}

TokenMatchBipartitePlugin::TokenMatchBipartitePlugin(Attributes attrs)
    : mAttrs(std::move(attrs))
{
}

TokenMatchBipartitePlugin::TokenMatchBipartitePlugin(TokenMatchBipartitePlugin const& other)
    : MatchPluginBase(other)
    , mAttrs(other.mAttrs)
    , mDevPos(nullptr) // every clone owns its own device copy
{
}

TokenMatchBipartitePlugin::~TokenMatchBipartitePlugin()
{
    if (mDevPos != nullptr)
        cudaFree(mDevPos);
}

IPluginV3* TokenMatchBipartitePlugin::clone() noexcept
{
    try
    {
        return new TokenMatchBipartitePlugin(*this);
    }
    catch (std::exception const& e)
    {
        logError(std::string(name()) + "::clone: " + e.what());
    }
    return nullptr;
}

size_t TokenMatchBipartitePlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t /*nbInputs*/,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    Dims const& d = inputs[0].max;
    int32_t const S = static_cast<int32_t>(mAttrs.src.size());
    return tokenMatchBipartiteWorkspaceSize(
        static_cast<int32_t>(d.d[0]), static_cast<int32_t>(d.d[1]), static_cast<int32_t>(d.d[2]), S);
}

void TokenMatchBipartitePlugin::uploadPositions()
{
    if (mDevPos != nullptr)
        return;
    std::vector<int32_t> pos(mAttrs.src);
    pos.insert(pos.end(), mAttrs.dst.begin(), mAttrs.dst.end());
    void* dev = nullptr;
    check(cudaMalloc(&dev, pos.size() * sizeof(int32_t)) == cudaSuccess, "cudaMalloc failed");
    if (cudaMemcpy(dev, pos.data(), pos.size() * sizeof(int32_t), cudaMemcpyHostToDevice) != cudaSuccess)
    {
        cudaFree(dev);
        throw std::runtime_error("cudaMemcpy of the src/dst positions failed");
    }
    mDevPos = static_cast<int32_t*>(dev);
}

IPluginV3* TokenMatchBipartitePlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept
{
    try
    {
        auto* p = new TokenMatchBipartitePlugin(*this);
        try
        {
            p->uploadPositions();
        }
        catch (...)
        {
            delete p;
            throw;
        }
        return p;
    }
    catch (std::exception const& e)
    {
        logError(std::string(name()) + "::attachToContext: " + e.what());
    }
    return nullptr;
}

int32_t TokenMatchBipartitePlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    try
    {
        uploadPositions(); // no-op after attachToContext
        Dims const& d = inputDesc[0].dims;
        int32_t const S = static_cast<int32_t>(mAttrs.src.size());
        int32_t const D = static_cast<int32_t>(mAttrs.dst.size());
        check(d.nbDims == 3 && d.d[1] == S + D, "metric must be [B, len(src) + len(dst), C]");
        TokenMatchBipartiteParams p;
        p.metric = static_cast<float const*>(inputs[0]);
        p.slot = static_cast<int32_t*>(outputs[0]);
        p.srcPos = mDevPos;
        p.dstPos = mDevPos + S;
        p.B = static_cast<int32_t>(d.d[0]);
        p.N = static_cast<int32_t>(d.d[1]);
        p.C = static_cast<int32_t>(d.d[2]);
        p.S = S;
        p.D = D;
        p.r = mAttrs.r;
        p.protect = mAttrs.protect;
        p.workspace = workspace;
        cudaError_t const err = launchTokenMatchBipartite(stream, p);
        check(err == cudaSuccess, std::string("kernel launch failed: ") + cudaGetErrorString(err));
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string(name()) + "::enqueue: " + e.what());
    }
    return -1;
}

PluginFieldCollection const* TokenMatchBipartitePlugin::getFieldsToSerialize() noexcept
{
    try
    {
        return setSerialFields({
            PluginField("r", &mAttrs.r, PluginFieldType::kINT32, 1),
            PluginField("src", mAttrs.src.data(), PluginFieldType::kINT32, static_cast<int32_t>(mAttrs.src.size())),
            PluginField("dst", mAttrs.dst.data(), PluginFieldType::kINT32, static_cast<int32_t>(mAttrs.dst.size())),
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
