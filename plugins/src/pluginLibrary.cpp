// Entry points of libedgemerge_plugins.so.
//
// TensorRT 10+ plugin-library convention (IPluginRegistry::loadLibrary, trtexec --dynamicPlugins,
// tensorrt.get_plugin_registry().load_library): export
//   extern "C" void setLoggerFinder(nvinfer1::ILoggerFinder*);
//   extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
// TensorRT registers the returned creators itself (their namespace is "edgemerge").
//
// For ctypes.CDLL users: edgemergeInitPlugins() registers the creators with the global registry
// (getPluginRegistry(), referenced weakly so the library loads without libnvinfer in the header-only
// compile check). Built with EDGEMERGE_STATIC_REGISTRATION (libedgemerge_plugins_static.so) the
// library does that on load, for ctypes.CDLL alone or trtexec --staticPlugins; do not pass that
// variant to --dynamicPlugins as well (the creators would be registered twice).
#include "pluginCommon.h"
#include "tokenMatchBipartitePlugin.h"
#include "tokenMatchCellPlugin.h"
#include "tokenMatchWindowPlugin.h"
#include "tokenMergeCellPlugin.h"
#include "tokenMergePlugin.h"
#include "tokenUnmergePlugin.h"

using namespace nvinfer1;

#pragma weak getPluginRegistry

namespace edgemerge
{
namespace plugin
{

IPluginCreatorInterface* const* pluginCreators(int32_t& nbCreators) noexcept
{
    static PluginCreator<TokenMatchBipartitePlugin> bipartite;
    static PluginCreator<TokenMatchCellPlugin> cell;
    static PluginCreator<TokenMatchWindowPlugin> window;
    static PluginCreator<TokenMergePlugin> merge;
    static PluginCreator<TokenMergeCellPlugin> mergeCell;
    static PluginCreator<TokenUnmergePlugin> unmerge;
    static IPluginCreatorInterface* const creators[] = {&bipartite, &cell, &window, &merge, &mergeCell, &unmerge};
    nbCreators = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
    return creators;
}

namespace
{
//! Register every creator with the global registry; returns how many were registered.
int32_t registerWithGlobalRegistry() noexcept
{
    if (&getPluginRegistry == nullptr)
        return -1; // libnvinfer is not loaded into the global symbol scope
    IPluginRegistry* registry = getPluginRegistry();
    if (registry == nullptr)
        return -1;
    int32_t n = 0;
    IPluginCreatorInterface* const* creators = pluginCreators(n);
    int32_t ok = 0;
    for (int32_t i = 0; i < n; ++i)
    {
        if (registry->registerCreator(*creators[i], kPLUGIN_NAMESPACE))
            ++ok;
    }
    return ok;
}

#if defined(EDGEMERGE_STATIC_REGISTRATION)
struct StaticRegistration
{
    StaticRegistration() { registerWithGlobalRegistry(); }
};
StaticRegistration const gStaticRegistration;
#endif
} // namespace

} // namespace plugin
} // namespace edgemerge

extern "C"
{

EDGEMERGE_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    edgemerge::plugin::setLoggerFinder(finder);
}

EDGEMERGE_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    return edgemerge::plugin::pluginCreators(nbCreators);
}

//! Register the creators with TensorRT's global plugin registry (after ctypes.CDLL). Returns the
//! number registered, or -1 when libnvinfer's getPluginRegistry is not reachable.
EDGEMERGE_EXPORT int32_t edgemergeInitPlugins()
{
    return edgemerge::plugin::registerWithGlobalRegistry();
}

} // extern "C"
