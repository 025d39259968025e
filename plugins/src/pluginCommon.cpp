#include "pluginCommon.h"

#include <atomic>

using namespace nvinfer1;

namespace edgemerge
{
namespace plugin
{

namespace
{
std::atomic<ILoggerFinder*> gLoggerFinder{nullptr};

void logAt(ILogger::Severity severity, std::string const& msg) noexcept
{
    try
    {
        ILoggerFinder* finder = gLoggerFinder.load();
        ILogger* logger = finder ? finder->findLogger() : nullptr;
        if (logger)
            logger->log(severity, ("[edgemerge] " + msg).c_str());
    }
    catch (...)
    {
    }
}
} // namespace

void setLoggerFinder(ILoggerFinder* finder) noexcept
{
    gLoggerFinder.store(finder);
}

void logError(std::string const& msg) noexcept
{
    logAt(ILogger::Severity::kERROR, msg);
}

void logWarning(std::string const& msg) noexcept
{
    logAt(ILogger::Severity::kWARNING, msg);
}

bool fieldIs(PluginField const& f, char const* name) noexcept
{
    return f.name != nullptr && std::string(f.name) == name;
}

std::vector<int32_t> fieldInts(PluginField const& f)
{
    check(f.data != nullptr || f.length == 0, std::string("field ") + f.name + " has no data");
    check(f.length >= 0, std::string("field ") + f.name + " has a negative length");
    std::vector<int32_t> out(static_cast<size_t>(f.length));
    for (int32_t i = 0; i < f.length; ++i)
    {
        int64_t v = 0;
        switch (f.type)
        {
        case PluginFieldType::kINT32: v = static_cast<int32_t const*>(f.data)[i]; break;
        case PluginFieldType::kINT64: v = static_cast<int64_t const*>(f.data)[i]; break;
        case PluginFieldType::kINT16: v = static_cast<int16_t const*>(f.data)[i]; break;
        case PluginFieldType::kINT8: v = static_cast<int8_t const*>(f.data)[i]; break;
        default: throw std::invalid_argument(std::string("field ") + f.name + " must be an integer field");
        }
        check(v >= INT32_MIN && v <= INT32_MAX, std::string("field ") + f.name + " does not fit int32");
        out[static_cast<size_t>(i)] = static_cast<int32_t>(v);
    }
    return out;
}

int32_t fieldInt(PluginField const& f)
{
    std::vector<int32_t> const v = fieldInts(f);
    check(v.size() == 1, std::string("field ") + f.name + " must hold exactly one integer");
    return v[0];
}

IPluginCapability* PluginBase::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    try
    {
        switch (type)
        {
        case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
        case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
        case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        }
    }
    catch (...)
    {
    }
    return nullptr;
}

int32_t PluginBase::configurePlugin(
    DynamicPluginTensorDesc const* /*in*/, int32_t /*nbInputs*/, DynamicPluginTensorDesc const* /*out*/,
    int32_t /*nbOutputs*/) noexcept
{
    return 0;
}

int32_t PluginBase::onShapeChange(
    PluginTensorDesc const* /*in*/, int32_t /*nbInputs*/, PluginTensorDesc const* /*out*/, int32_t /*nbOutputs*/) noexcept
{
    return 0;
}

IPluginV3* PluginBase::attachToContext(IPluginResourceContext* /*context*/) noexcept
{
    try
    {
        return clone();
    }
    catch (...)
    {
        return nullptr;
    }
}

PluginFieldCollection const* PluginBase::setSerialFields(std::vector<PluginField> fields) noexcept
{
    mSerialFields = std::move(fields);
    mSerialCollection.nbFields = static_cast<int32_t>(mSerialFields.size());
    mSerialCollection.fields = mSerialFields.empty() ? nullptr : mSerialFields.data();
    return &mSerialCollection;
}

int32_t MatchPluginBase::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* /*inputTypes*/, int32_t nbInputs) const noexcept
{
    if (nbInputs != 1 || nbOutputs != 1)
        return -1;
    outputTypes[0] = DataType::kINT32;
    return 0;
}

int32_t MatchPluginBase::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& /*exprBuilder*/) noexcept
{
    try
    {
        check(nbInputs == 1 && nbOutputs == 1, "expects 1 input (metric) and 1 output (slot)");
        check(inputs[0].nbDims == 3, "metric must be [B, N, C]");
        outputs[0].nbDims = 2;
        outputs[0].d[0] = inputs[0].d[0];
        outputs[0].d[1] = inputs[0].d[1];
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string(getPluginName()) + "::getOutputShapes: " + e.what());
    }
    return -1;
}

bool MatchPluginBase::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != 1 || nbOutputs != 1 || pos < 0 || pos > 1)
        return false;
    PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR)
        return false;
    return pos == 0 ? d.type == DataType::kFLOAT : d.type == DataType::kINT32;
}

} // namespace plugin
} // namespace edgemerge
